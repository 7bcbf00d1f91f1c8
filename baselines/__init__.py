"""Registered baselines, one module each; importing this package registers them."""

from baselines import lf_dnn  # noqa: F401

# isort: split
from baselines import emt_dlfr, lnln  # noqa: F401

# isort: split
from baselines import dlf, mplmm, mult  # noqa: F401

# isort: split
from baselines import clue, dicmor, dmd, gear, glomo, mag_bert  # noqa: F401  # noqa: F401
