"""Wire models: camelCase JSON on the wire, snake_case in Python."""
