"""Shipped policy packs (TOML data files); a package only so that installs include them."""
