"""The default set's recipe as `make default-models` runs it (no training here: the members' flags only)."""

from __future__ import annotations

from tests.conftest import require_shared
from training import default_models, ensemble, train_classifier


def test_members_parse_differ_in_init_and_share_the_split_the_ensemble_rebuilds() -> None:
    shared = require_shared("nih1000").parent
    runs = default_models.member_argvs(shared, seed=2)
    parsed = {name: train_classifier.get_args_parser().parse_args(argv) for name, argv in runs}
    sources = {name.split("-")[0] for name in parsed}
    assert sources == {"nih", "pneumonia"}
    for source in sources:
        seeds = [args.seed for name, args in parsed.items() if name.startswith(source)]
        assert len(set(seeds)) == len(seeds), f"{source} members must differ in their init seeds"
    for key in ensemble.SPLIT_SETTINGS:  # what `xray train ensemble` checks before it combines them
        assert len({str(getattr(args, key)) for args in parsed.values()}) == 1, key
    assert all(args.split_seed == 2 and args.test_images_under for args in parsed.values())
