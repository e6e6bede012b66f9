"""The typed backend Protocols, one module per mechanism."""
