"""CIDer (Zhong et al. 2025): MSSD (WSAM, MCT, distillation) and MACI (MCM, counterfactual text)."""

from cider import maci, model  # noqa: F401  (registers the `cider` model and the `maci` wrapper)
