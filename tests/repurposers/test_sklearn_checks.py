"""scikit-learn's estimator checks on every head, fed feature arrays (``source_model=None``).

Expected failures are declared per head with the reason; everything else must pass.
"""

from __future__ import annotations

import importlib.util

from sklearn.utils.estimator_checks import parametrize_with_checks

from xfer import (
    AutoRepurposer,
    BnnRepurposer,
    GpRepurposer,
    LaplaceRepurposer,
    LrRepurposer,
    SvmRepurposer,
)

ESTIMATORS = [
    LrRepurposer(None, None, random_state=0),
    SvmRepurposer(None, None, random_state=0),
    SvmRepurposer(None, None, kernel="rbf", enable_probability_estimates=True, random_state=0),
    LaplaceRepurposer(None, None, random_state=0),
    AutoRepurposer(None, None, random_state=0),
]
if importlib.util.find_spec("xfer.repurposers._gp_core"):
    ESTIMATORS.append(GpRepurposer(None, None, max_function_evaluations=10, random_state=0))
if importlib.util.find_spec("xfer.repurposers._bnn_core"):
    ESTIMATORS.append(
        BnnRepurposer(
            None,
            None,
            num_epochs=10,
            learning_rate=0.05,
            num_samples_mc_prediction=10,
            random_state=0,
        )
    )


def expected_failed_checks(estimator):
    failures = {}
    return failures


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
