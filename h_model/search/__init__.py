"""Reinforcement-learned design search: an LSTM controller trained by REINFORCE.

Modules: ``controller`` (the autoregressive controller), ``reinforce`` (the search loop),
``task`` (the few-shot child task that scores designs), ``nas`` (CNN architecture search,
registers the ``nas_cnn`` backbone on import), ``optimizers`` (update-rule search, PowerSign,
AddSign) and ``activations`` (activation-function search, Swish).

Nothing is imported here on purpose: importing ``h_model.search.nas`` is what registers the
``nas_cnn`` backbone, and the package that wants it imports that module explicitly.
"""
