"""Behaviour of train_classify.py's losses: class weights and the ordinal soft labels (--ordinal-labels)."""
import argparse

import pytest
import torch
import torch.nn.functional as F

from tools.metrics import HERLEV_GRADE_ORDER
from train_classify import classification_task, ordinal_soft_targets, ordinal_targets
from utils.errors import UserError

# Herlev's six classes as the classifier sorts them (alphabetically), which is not their grade order
HERLEV_SIX = sorted(name for name in HERLEV_GRADE_ORDER if name != "normal_columnar")


def test_ordinal_targets_peak_at_the_true_grade_and_fall_with_grade_distance():
    targets = ordinal_targets(HERLEV_SIX, [n for n in HERLEV_GRADE_ORDER if n in HERLEV_SIX], sharpness=2.0)
    assert torch.allclose(targets.sum(dim=1), torch.ones(6))
    severe, cis, light = (HERLEV_SIX.index(n) for n in ("severe_dysplastic", "carcinoma_in_situ", "light_dysplastic"))
    moderate, superficial = HERLEV_SIX.index("moderate_dysplastic"), HERLEV_SIX.index("normal_superficiel")
    row = targets[severe]
    assert row.argmax() == severe
    assert row[cis] == pytest.approx(row[moderate])  # one grade either side
    assert row[severe] / row[cis] == pytest.approx(torch.e ** 2)
    assert row[cis] > row[light] > row[superficial]  # by grade, not by the alphabetical class index


def test_soft_loss_with_one_hot_targets_is_the_weighted_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(8, 4, generator=generator), torch.tensor([0, 1, 2, 3, 3, 2, 1, 1])
    weights = torch.tensor([0.5, 1.0, 2.0, 0.5])
    soft = classification_task(list("abcd"), weights, 0.0, soft_targets=torch.eye(4)).loss(logits, labels)
    assert soft.item() == pytest.approx(F.cross_entropy(logits, labels, weight=weights).item(), rel=1e-6)
    ordinal = classification_task(list("abcd"), weights, 0.0, ordinal_targets(list("abcd"), list("abcd"))).loss(logits, labels)
    assert ordinal.item() != pytest.approx(soft.item())


def test_ordinal_labels_need_classes_with_a_known_grade_order():
    args = argparse.Namespace(ordinal_labels=True, data_root="data/demo")
    with pytest.raises(UserError, match="known grade order"):
        ordinal_soft_targets(args, ["im_Dyskeratotic", "im_Koilocytotic"])
    assert ordinal_soft_targets(argparse.Namespace(ordinal_labels=False), ["a", "b"]) is None
    assert ordinal_soft_targets(args, HERLEV_SIX).shape == (6, 6)
