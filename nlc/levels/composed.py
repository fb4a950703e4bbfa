"""Names the compiler composes from a state's name: its tensors (an MLP memory `M` holds
`M_W1`, `M_W2`, ...), each tensor's next value (`M_W1_next`) and its chunk-start copy
(`M_W1_0`). Derivations print them and generated code uses them, so a spec may not take one
for a name of its own: the checker refuses it at the line that defines it."""

from __future__ import annotations

from nlc.levels.records import MemoryForm


def state_tensors(name: str, form: MemoryForm) -> tuple[str, ...]:
    """The tensors of a memory named `name`: itself, or one weight per layer of an MLP."""
    if form.kind == "mlp":
        return tuple(f"{name}_W{i + 1}" for i in range(len(form.dims) - 1))
    return (name,)


def composed_names(name: str, form: MemoryForm) -> dict[str, str]:
    """Composed name -> what it holds, for the state `name`."""
    found = {}
    for tensor in state_tensors(name, form):
        if tensor != name:
            found[tensor] = f"a weight of the MLP memory '{name}'"
        found[f"{tensor}_next"] = f"the next value of '{tensor}'"
        found[f"{tensor}_0"] = f"the chunk-start copy of '{tensor}'"
    return found
