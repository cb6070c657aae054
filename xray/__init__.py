"""The `xray` command line (see xray/cli.py). Sits above `training/` and `service/`; neither imports it."""
