"""Stage `check`: AST -> checked `Spec`s, each holding a `LevelGraph` of its levels."""

from nlc.levels.checker import Spec, check, parse_overrides
from nlc.levels.graph import Edge, LevelGraph
from nlc.levels.records import TRAIN, LevelRecord, MemoryForm, Term

__all__ = ["TRAIN", "Edge", "LevelGraph", "LevelRecord", "MemoryForm", "Spec", "Term", "check",
           "parse_overrides"]
