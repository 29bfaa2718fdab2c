"""Bilevel applications of the implicit core (:mod:`mdsens.implicit`), on local data only.

- :mod:`.hyperparameters`: ℓ2 strength of multinomial logistic regression (stationarity) and
  of a smoothed multiclass linear SVM (dual, projected-gradient fixed point);
- :mod:`.distillation`: a few synthetic digits per class that train a classifier alone;
- :mod:`.dictionary`: task-driven dictionary learning with elastic-net codes
  (proximal-gradient fixed point);
- :mod:`.potential_fit`: potential parameters fitted so that the relaxed crystal reproduces
  measured properties (gradients through the relaxation, elastic constants included).

Data: :func:`load_digits_split`, scikit-learn's bundled 8×8 digits (nothing downloaded).
"""

from . import dictionary as dictionary
from . import distillation as distillation
from . import hyperparameters as hyperparameters
from . import potential_fit as potential_fit
from ._data import Split as Split
from ._data import load_digits_split as load_digits_split
from .dictionary import learn_dictionary as learn_dictionary
from .distillation import distill_dataset as distill_dataset
from .hyperparameters import tune_logistic_regression as tune_logistic_regression
from .hyperparameters import tune_multiclass_svm as tune_multiclass_svm
from .potential_fit import PotentialFit as PotentialFit
from .potential_fit import fit_potential as fit_potential

__all__ = [
    "PotentialFit", "Split", "dictionary", "distill_dataset", "distillation", "fit_potential",
    "hyperparameters", "potential_fit",
    "learn_dictionary", "load_digits_split", "tune_logistic_regression", "tune_multiclass_svm",
]
