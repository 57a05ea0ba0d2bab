"""``jaxnm.convert.LayerReport.as_record``: the JSON record the conversion examples write."""

import json

import numpy as np

from jaxnm.convert import LayerReport


def test_as_record_is_json_ready():
    report = LayerReport(("blocks", 0, "fc1"), (64, 256), np.float32(0.25), float("nan"))
    record = report.as_record()
    assert record["path"] == "blocks/0/fc1"
    assert record["magnitude_error"] == 0.25 and type(record["magnitude_error"]) is float
    assert np.isnan(record["reconstructed_error"])
    assert json.loads(json.dumps(record))["path"] == "blocks/0/fc1"
