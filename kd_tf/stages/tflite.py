"""`tflite`: converts an export to TFLite and measures it against the export
(see `kd_tf.lite.export_tflite`)."""

from kd_tf import lite
from kd_tf.errors import ConfigError
from kd_tf.stages.predict import load_matching_model, require_model_dir
from kd_tf.stages.training_run import load_data


def run(config):
    """`--stage=tflite`: returns the report, also written to `<tflite_path>.json`."""
    require_model_dir(config)
    if not config.lite.tflite_path:
        raise ConfigError(
            ("stage", "tflite_path"), "{0}=tflite needs {1}=FILE: where to write the .tflite"
        )
    splits = load_data(config.data)
    served = load_matching_model(config, splits)
    return lite.export_tflite(
        served,
        config.lite.tflite_path,
        config.lite.quantize,
        splits,
        seed=config.runtime.seed,
        batch_size=config.optimization.eval_batch_size,
    )
