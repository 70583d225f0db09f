"""Explanation methods behind one contract (:mod:`vebi.methods.registry`): vebi's own, and the
baselines: gradients by Captum, Grad-CAM and Grad-CAM++ here, equal to pytorch-grad-cam's.

Registration order is the order of :func:`method_names`: vebi's methods first.
"""

from vebi.methods.registry import METHODS, Method, build_method, method_names, method_options, register_method
from vebi.methods import relevant_features  # noqa: E402,F401  (registers vebi, vebi_nofix, activation_map)
from vebi.methods import gradients  # noqa: E402,F401  (guided_backprop, deconvnet, integrated_gradients)
from vebi.methods import cam  # noqa: E402,F401  (grad_cam, grad_cam_plus_plus)

__all__ = ["METHODS", "Method", "build_method", "method_names", "method_options", "register_method"]
