"""framework/network_args.py: the arguments a network takes (through ``**kwargs`` chains) and the one-line
error for an unknown one."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from litzoo.framework.network_args import check_network_kwargs, network_arguments


class Encoder(nn.Module):
    def __init__(self, width: int = 8, depth: int = 2, *, heads: int = 1) -> None:
        super().__init__()


class Autoencoder(Encoder):
    """Adds a decoder and forwards the encoder's arguments through ``**kwargs``."""

    def __init__(self, decoder_width: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)


class Classifier(Encoder):
    """Does not forward: only its own arguments."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()


def test_arguments_follow_kwargs_to_the_parent_only_when_forwarded():
    assert network_arguments(Encoder) == {"width", "depth", "heads"}
    assert network_arguments(Autoencoder) == {"decoder_width", "width", "depth", "heads"}
    assert network_arguments(Classifier) == {"num_classes"}


def test_unknown_arguments_are_named_with_a_suggestion():
    check_network_kwargs(Autoencoder, {"width": 3, "decoder_width": 2}, "Module")  # all known: no error
    with pytest.raises(ValueError, match=r"^Module: unknown network argument 'widht' \(did you mean 'width'\?\), 'zzz' for Autoencoder; "
                                         r"it takes decoder_width, depth, heads, width$"):  # fmt: skip
        check_network_kwargs(Autoencoder, {"widht": 3, "zzz": 1}, "Module")


def test_arguments_the_module_sets_itself_are_refused_and_not_offered():
    check_network_kwargs(Autoencoder, {"depth": 3}, "Module", set_by_owner=("width",))
    with pytest.raises(ValueError, match=r"^Module: Autoencoder's 'width' is set by Module itself; do not give it$"):
        check_network_kwargs(Autoencoder, {"width": 3, "depth": 3}, "Module", set_by_owner=("width",))
    with pytest.raises(ValueError, match=r"'widht' for Autoencoder; it takes decoder_width, depth, heads$"):  # no hint towards 'width'
        check_network_kwargs(Autoencoder, {"widht": 3}, "Module", set_by_owner=("width",))
