"""The .nl grammar (nl.lark), shipped as package data."""
