"""An omega window's rule reads earlier tokens' context (`k_m1`, ...). Generated layers do not
provide it, so compile refuses at the objective with a located error instead of writing a
module that fails with a NameError when it runs; derive still accepts the spec."""

from __future__ import annotations

from pathlib import Path

from nlc.cli import main

SPEC = Path(__file__).parent / "specs" / "omega_window.nl"


def test_compile_refuses_an_omega_window_at_the_objective(tmp_path, capsys):
    assert main(["derive", str(SPEC)]) == 0
    capsys.readouterr()
    assert main(["compile", str(SPEC), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{SPEC}:17:15: error: level 'memory': the objective reads the context of " \
           "earlier tokens (k_m1, k_m2, k_m3, v_m1, ...)" in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert list(tmp_path.iterdir()) == []
