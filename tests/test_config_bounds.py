"""Numeric bounds in config-field metadata: one check, in ``build_config``, for every plugin."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mint_core.config import ConfigError, build_config


@dataclass
class ThirdPartyConfig:
    """A plugin's options as a third-party package would write them."""

    rate: float = field(default=0.1, metadata={"help": "Step size.", "gt": 0})
    share: float = field(default=0.5, metadata={"help": "A fraction.", "min": 0, "max": 1})
    steps: int = field(default=-1, metadata={"help": "-1: until done.", "min": -1})
    below: int = field(default=0, metadata={"lt": 10})
    optional: int | None = field(default=None, metadata={"min": 1})
    ks: list[int] | None = None
    free: float = 0.0  # no bounds: any finite number


def build(**options):
    return build_config(ThirdPartyConfig, options, section="optimizer", component="third-party")


@pytest.mark.parametrize("options, message", [
    ({"rate": 0}, r"optimizer.rate=0.0 is out of range: it must be > 0. \(optimizer.rate: Step size.\)"),
    ({"rate": "-1e-3"}, r"optimizer.rate=-0.001 is out of range: it must be > 0"),
    ({"share": 1.01}, r"optimizer.share=1.01 .* <= 1"),
    ({"share": -0.0001}, r"optimizer.share=-0.0001 .* >= 0"),
    ({"steps": -2}, r"optimizer.steps=-2 .* >= -1"),
    ({"below": 10}, r"optimizer.below=10 .* < 10"),
    ({"optional": 0}, r"optimizer.optional=0 .* >= 1"),
    ({"free": "nan"}, r"optimizer.free='nan' is not a finite number"),
    ({"free": "-inf"}, r"optimizer.free='-inf' is not a finite number"),
    ({"free": True}, r"optimizer.free=True is not a finite number"),
    ({"steps": "3.5"}, r"optimizer.steps='3.5' is not an integer"),
    ({"steps": "²"}, r"optimizer.steps='²' is not an integer"),
    ({"ks": "1,x"}, r"optimizer.ks='x' is not an integer"),
])
def test_out_of_range_values_name_the_option_and_bound(options, message):
    with pytest.raises(ConfigError, match=message):
        build(**options)


def test_values_at_the_bounds_and_unset_optionals_pass():
    config = build(rate="1e-9", share=1, steps=-1, below=9, optional=None, ks="1, 3,10", free=-1e300)
    assert (config.rate, config.share, config.steps, config.below, config.optional) == (1e-9, 1.0, -1, 9, None)
    assert config.ks == [1, 3, 10] and config.free == -1e300
