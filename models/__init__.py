"""Network definitions and the torch-free imaging core.

This package must stay light: importing it (or `models.imaging`, `models.preprocessing`, `models.labels`,
`models.phantoms`) never imports torch. Modules that need torch (`classifier`, `autoencoder`) import it themselves.
"""
