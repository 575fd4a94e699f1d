"""Keys set on the command line are checked against the components a recipe selects (+experiment=... with its
`override /model: convnet`), not against the defaults of conf/config.yaml."""
from __future__ import annotations

import json

import pytest

from framework.cli.app import check_unknown_keys
from framework.core.errors import FrameworkError

from conftest import FAST, assert_clean_failure

LAYERS = "model.layers=[{type:conv2d,filters:4,size:3,pad:1},relu,{type:maxpool2d,size:2},{type:affine}]"


@pytest.mark.parametrize("argv", [
    ["+experiment=convnet_digits", LAYERS],  # the recipe picks model=convnet: it has model.layers
    ["+experiment=convnet_digits", "model.input_shape=[1,8,8]", "schedule.period=5"],
    ["+experiment=convnet_digits", "model=mlp", "model.hidden_sizes=[3]"],  # the command line wins over the recipe
    ["model=mlp", "+experiment=convnet_digits", "model.hidden_sizes=[3]"],  # in either order, as in Hydra
    ["+experiment=optimizers", "regularizer.reg=1e-3"],
])
def test_keys_of_the_recipes_choice_pass(argv):
    check_unknown_keys(argv)


@pytest.mark.parametrize("argv, pieces", [
    # the MLP's key is unknown once the recipe has chosen the convnet: the list names the convnet's keys
    (["+experiment=convnet_digits", "model.hidden_sizes=[3]"], ["'model.hidden_sizes'", "model.layers"]),
    (["+experiment=convnet_digits", "model=mlp", LAYERS], ["'model.layers'", "model.hidden_sizes"]),
    (["+experiment=convnet_mnist", "data.image_shap=[1,28,28]"], ["'data.image_shap'"]),
])
def test_keys_the_recipes_choice_lacks_are_refused(argv, pieces):
    with pytest.raises(FrameworkError) as info:
        check_unknown_keys(argv)
    for piece in pieces:
        assert piece in str(info.value)


@pytest.mark.slow
def test_recipe_with_a_layer_list_trains_through_the_cli(cli, tmp_path):
    """The command of the bug report: the recipe's model with the user's layer list, no model=convnet by hand."""
    result = cli(*FAST, "+experiment=convnet_digits", LAYERS, "epochs=3", "lr=1e-2", "eval_with=raw", "data.max_train=400")
    assert result.returncode == 0, result.stderr
    (summary,) = tmp_path.glob("outputs/runs/*/*/summary.json")
    metrics = json.loads(summary.read_text())["metrics"]
    assert metrics["test_acc"] > 0.3, metrics  # chance is 0.1
    (config,) = tmp_path.glob("outputs/runs/*/*/.hydra/config.yaml")
    assert "filters: 4" in config.read_text() and "model.hidden_sizes" not in config.read_text()


def test_recipe_with_a_key_of_the_wrong_model_fails_cleanly(cli):
    result = cli(*FAST, "+experiment=convnet_digits", "model.hidden_sizes=[3]")
    assert result.returncode == 2
    assert_clean_failure(result, ["'model.hidden_sizes'", "model.layers"])
