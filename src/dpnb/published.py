"""Published results the book compares against, with their accountant and setting.

Each row: ``dataset``, ``source`` (short, for legends), ``cite`` (key in ``book/references.bib``),
``model``, ``epsilon``, ``delta``, ``accountant``, ``test_accuracy``. The ε values are as
printed in the papers; their accountants differ, so compare with care (see the budget chapter).

Example::

    >>> from dpnb.published import published
    >>> float(published("mnist")["test_accuracy"].max())
    0.981
"""

from __future__ import annotations

import pandas as pd

_ROWS = [
    # Abadi et al. 2016, Section 5.2 / Fig. 4: PCA + 1000-unit MLP, moments accountant.
    ("mnist", "Abadi et al. 2016", "abadi2016deep", "PCA + MLP", 0.5, 1e-5, "moments accountant", 0.90),
    ("mnist", "Abadi et al. 2016", "abadi2016deep", "PCA + MLP", 2.0, 1e-5, "moments accountant", 0.95),
    ("mnist", "Abadi et al. 2016", "abadi2016deep", "PCA + MLP", 8.0, 1e-5, "moments accountant", 0.97),
    # TF Privacy MNIST tutorial: CNN, RDP with the old (Mironov 2017) conversion.
    ("mnist", "TF Privacy tutorial", "tfprivacy", "CNN", 1.19, 1e-5, "RDP, old conversion", 0.950),
    ("mnist", "TF Privacy tutorial", "tfprivacy", "CNN", 3.01, 1e-5, "RDP, old conversion", 0.966),
    ("mnist", "TF Privacy tutorial", "tfprivacy", "CNN", 7.10, 1e-5, "RDP, old conversion", 0.970),
    # Tramèr & Boneh 2021, Table 2: end-to-end tanh CNN, RDP.
    ("mnist", "Tramèr & Boneh 2021", "tramer2021differentially", "end-to-end CNN", 3.0, 1e-5, "RDP", 0.981),
]
COLUMNS = ["dataset", "source", "cite", "model", "epsilon", "delta", "accountant", "test_accuracy"]


def published(dataset: str) -> pd.DataFrame:
    """The published rows for ``dataset``."""
    df = pd.DataFrame(_ROWS, columns=COLUMNS)
    return df[df["dataset"] == dataset].reset_index(drop=True)
