"""Pretrained representation uncertainties (URL benchmark): vMF helpers and losses."""
