"""Files: datasets validated as they stream in, and the result bundles workers produce."""
