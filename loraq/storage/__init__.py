"""The artifact store (local disk or S3), and the archive and hashing rules for what goes in it."""
