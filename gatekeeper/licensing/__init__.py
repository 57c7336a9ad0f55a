"""Licences sold to crawler vendors: signed tokens and the keys that sign them."""
