"""Deployment of a trained (or compressed) model: its recurrent step as real arithmetic.

- ``stream``: the step's real parameters (``real_step_params``) and a fused torch/numpy streamer (``FusedStream``);
- ``export``: the step as an ONNX graph plus a JSON description beside it (``export_onnx``);
- ``predict``: one input encoded as the task does and streamed through onnxruntime (``OnnxStream``);
- ``cli``: the ``dssbt export``, ``dssbt predict``, ``dssbt deploy-measure`` and ``dssbt reduce-s4d`` commands.
"""
