"""Fixtures for the op's tests: fixing the kernels' candidate configs."""
import pytest

from kat.ops.group_rational import plan, tuning


@pytest.fixture
def configs(monkeypatch):
    """``configs(fwd=[...], bwd=[...])`` makes those the only candidates (on the GPU and in the
    interpreter) for plans built afterwards; plans built before are forgotten. The kernel variants
    a config selects (SELECT, ROW_REDUCE, STAGES, FOLD, block widths) are reachable no other way."""
    def use(fwd=None, bwd=None):
        monkeypatch.setattr(plan, "_PLANS", {})
        for name, value in (("FWD", fwd), ("BWD", bwd)):
            if value is not None:
                monkeypatch.setattr(tuning, f"GPU_{name}_CONFIGS", list(value))
                monkeypatch.setattr(tuning, f"INTERPRETER_{name}_CONFIGS", list(value))
    use()
    return use


def only_plan(x, a, b, channel_dim=-1):
    """The kernels' plan the calls on these arguments use."""
    return plan.plan_for(x, a, b, channel_dim % x.dim())
