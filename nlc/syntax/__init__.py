"""Stage `parse`: `.nl` text -> AST (`parse`), and back (`format_module`)."""

from nlc.syntax.format import format_module
from nlc.syntax.parser import parse

__all__ = ["format_module", "parse"]
