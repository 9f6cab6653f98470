"""A classifier on the cell measurements alone (tools/morphometry.py), averaged with the CNN's probabilities.

Measured by 5-fold cross-validation on Herlev (docs/experiments-cells.md): the measurements alone grade
about as well as the CNN, their errors differ, and the plain average of the two models' probabilities beats
either one and beats the learned alternatives tried (measurements as an input of the CNN's head; a stacker
fitted on the validation split). A multinomial logistic regression is used: as good as a random forest,
gradient boosting or an RBF SVM here, and applied with a few numpy lines, so inference needs no scikit-learn.

The fitted model is a dict of arrays kept in the classification checkpoint (and the ONNX file's metadata):
mean, std (of the signed-log measurements of the training cells), coef [K, F], intercept [K].
"""
from typing import Dict, Sequence

import numpy as np

REGULARISATION = 0.3  # inverse L2 strength of the logistic regression (C): 0.1-1 were within 0.005 in CV


def signed_log(measurements: np.ndarray) -> np.ndarray:
    """Areas in px^2 next to ratios: a signed log brings them to comparable ranges before standardising."""
    return np.sign(measurements) * np.log1p(np.abs(measurements))


def fit_measurement_model(measurements: np.ndarray, labels: Sequence[int], num_classes: int) -> Dict[str, list]:
    """Fit the logistic regression on the training cells' measurements [N, F] and class indices [N]."""
    from sklearn.linear_model import LogisticRegression

    logged = signed_log(np.asarray(measurements, np.float64))
    mean, std = logged.mean(axis=0), logged.std(axis=0) + 1e-6
    model = LogisticRegression(C=REGULARISATION, max_iter=5000).fit((logged - mean) / std, labels)
    coef, intercept = np.zeros((num_classes, logged.shape[1])), np.full(num_classes, -1e9)  # absent from train: p = 0
    if len(model.classes_) == 2:  # scikit-learn keeps one row, the second class's logit against the first's 0
        coef[model.classes_[0]], intercept[model.classes_[0]] = 0.0, 0.0
        coef[model.classes_[1]], intercept[model.classes_[1]] = model.coef_[0], model.intercept_[0]
    else:
        coef[model.classes_], intercept[model.classes_] = model.coef_, model.intercept_
    return {"mean": mean.tolist(), "std": std.tolist(), "coef": coef.tolist(), "intercept": intercept.tolist()}


def measurement_probs(model: Dict[str, list], measurements: np.ndarray) -> np.ndarray:
    """Class probabilities [N, K] of measurements [N, F]."""
    standardized = (signed_log(np.asarray(measurements, np.float64)) - np.asarray(model["mean"])) / np.asarray(model["std"])
    logits = standardized @ np.asarray(model["coef"]).T + np.asarray(model["intercept"])
    logits = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits / logits.sum(axis=1, keepdims=True)
