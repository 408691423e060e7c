"""Default names of the pipeline, of the model it serves and of its KFP experiment.

The pipeline name keys ML Metadata's contexts (locally) and names the pipeline in
Kubeflow Pipelines; the model name is the TF Serving model, `<serving dir>/<model name>`;
runs on Kubeflow Pipelines go into the experiment.
"""

PIPELINE_NAME = "transferline"
MODEL_NAME = "transferline"
EXPERIMENT_NAME = "transferline"
