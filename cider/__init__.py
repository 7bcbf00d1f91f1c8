"""CIDer (Zhong et al. 2025): MSSD (WSAM, MCT, distillation) and MACI (MCM, counterfactual text)."""
