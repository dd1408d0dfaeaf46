"""The base LLMs this server fine-tunes: local directories the operator allows, and hub ids."""
