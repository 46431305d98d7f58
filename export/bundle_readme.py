"""The bundle's README.md: what the model does, its input and output, normalisation, halo, borders,
how to run it in DeepImageJ and Python, and the validation results (written after validation)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from w2sr.core.contract import RULE


def normalisation_text(inp: dict, out: dict) -> str:
    """The README's account of the rdf's pre- and postprocessing."""
    if not inp.get("preprocessing"):
        return "- No normalisation: the network takes the image's values (as float32) and its output is kept as it is."
    pre = inp["preprocessing"][0]
    if pre["name"] == "scale_range":
        kw = pre["kwargs"]
        lo, hi = kw["min_percentile"], kw["max_percentile"]
        return f"""- Preprocessing (`scale_range`, per sample): each image is scaled by its own percentiles,
  `x' = (x - p{lo}) / (p{hi} - p{lo} + 1e-6)`, over the whole image (DeepImageJ computes them before
  tiling). A camera offset or gain therefore does not change the output.
- No postprocessing: the output is in **normalised units**, as the training targets were (each SIM
  target scaled by its own {lo}/{hi} percentiles): about 0 at the background, 1 at bright structures.
  DeepImageJ cannot map it back to the input's intensities (JDLL 0.6.1 has no `scale_range` with
  `reference_tensor`), so no consumer does.
- The percentile is JDLL's: the sorted pixel values' element `int(N * p / 100)` (no interpolation);
  `w2sr predict`, training and the Fiji stand-in use the same. bioimageio.core interpolates between
  neighbouring values (numpy's `linear`): on the test image the two differ by less than the zoo
  tolerance (parity.md shows the measured difference).
- An image whose two percentiles coincide (a constant image, or one that is constant on more than
  {float(hi) - float(lo):g} % of its pixels) has no contrast to normalise: DeepImageJ divides by 1e-6 and returns the
  network's answer to that input; `w2sr predict` does the same and warns, naming the plane."""
    kw = pre["kwargs"]
    if not out.get("postprocessing"):
        return f"""- Preprocessing (`zero_mean_unit_variance`, fixed): `x' = (x - {kw['mean'][0]}) / ({kw['std'][0]} + 1e-6)`
  (the statistics the model was trained with).
- No postprocessing: the output is the network's own."""
    post = out["postprocessing"][0]["kwargs"]
    return f"""- Preprocessing (`zero_mean_unit_variance`, fixed): `x' = (x - {kw['mean'][0]}) / ({kw['std'][0]} + 1e-6)`.
- Postprocessing (`zero_mean_unit_variance`, fixed, i.e. an affine map back to SIM units): `y = (y' - {post['mean'][0]}) / ({post['std'][0]} + 1e-6)`.
- The means and stds are written as one-element lists (`mean: [m]`): with `axes: xy` that is the
  form DeepImageJ 3.1 (JDLL 0.6.1) requires; a plain number makes it throw before inference.
- Both statistics come from the training run (`training_config.yaml`, `normalization:`); the
  network itself works on the normalised values."""


def render_readme(*, name: str, rdf: dict, validation_md: str, run_name: str, exported_with: dict,
                  halo_info: dict, macros: Sequence[str]) -> str:
    inp, out = rdf["inputs"][0], rdf["outputs"][0]
    tile = inp["shape"]["min"][1]
    halo_out = out["halo"][1]
    network = rdf["config"]["w2sr"]["network"]
    macro_list = "\n".join(f"- `fiji_macros/{Path(x).name}`" for x in macros) or "- (none in this export)"
    scale = int(out["shape"]["scale"][1])
    cites = "\n".join(f"- {c['text']} <{c.get('url') or 'https://doi.org/' + str(c.get('doi'))}>" for c in rdf["cite"])
    origin = (f"Trained in run `{run_name}`; exported by `w2sr export`" if "generator" in (rdf["config"]["w2sr"].get("run") or {})
              else f"Exported from `{(rdf['config']['w2sr'].get('run') or {}).get('keras_file', run_name)}` by `w2sr bundle`")
    return f"""# {name}

{rdf['description']}

{origin} with TensorFlow {exported_with.get('tensorflow')},
Keras {exported_with.get('keras')}, tf2onnx {exported_with.get('tf2onnx')}.

## Input and output

| | tensor | axes | size | units |
|---|---|---|---|---|
| input | `input` | b, y, x, c (c = 1) | rdf: {tile} x {tile} (DeepImageJ's tile); the weights take any side >= {network['any_size_from']} px | {inp['description']} |
| output | `output` | b, y, x, c (c = 1) | {scale} x the input | {out['description']} |

{normalisation_text(inp, out)}
- Halo: {halo_info.get('halo')} input pixels ({halo_out} output pixels). Measured on the generator:
  tiles whose kept part has {halo_info.get('generator_halo')} px of context reproduce the whole-image result within
  the zoo tolerance `{RULE}` (with {halo_info.get('too_small')} px the largest
  difference was {halo_info.get('too_small_max_diff')}); the bundle adds a margin and checks it on the exported
  weights through DeepImageJ's tiles and `w2sr predict`'s. Tiles must be larger than {2 * int(halo_info.get('halo') or 0)} px.
- Borders: the network pads its input symmetrically by {network['padding']} px inside the graph and
  crops its output, so whole-image inference (`bioimageio test`, Python) and DeepImageJ's
  mirror-padded tiles give the same pixels up to the image edge (checked below, "DeepImageJ 3.1").
- Tiles in DeepImageJ: the rdf fixes the input at {tile} x {tile} (step 0), so DeepImageJ 3.1
  cuts every image into {tile} px tiles with {halo_info.get('halo')} px of overlap context and its memory stays that of
  one tile, whatever the image size.

## Files

| file | what |
|---|---|
| `rdf.yaml` | **the file for DeepImageJ**: BioImage.IO description, format 0.4.10 (what DeepImageJ 3.1 / JDLL 0.6.1 reads, sizes and tiles correctly for a {scale}x model); also passes `bioimageio test` |
| `tf_saved_model.zip` | frozen-graph TensorFlow SavedModel (`saved_model.pb` + `variables/` at the zip root), tag `serve`, signature `serving_default`, `input` -> `output`; declared `tensorflow_version: 1.15` (runs in TF 1.15 and 2.x) |
| `weights.onnx` | the same graph in ONNX, opset 17, input `input`, output `output`, dynamic batch/height/width |
| `test_input.npy`, `test_output.npy` | float32 test tensors (axes byxc), raw input and postprocessed output |
| `sample_input.tif`, `sample_output.tif` | the same image as 2D TIFFs, for DeepImageJ's test run |
| `cover.png` | input (nearest-neighbour enlarged) next to the output |
| `preprocessing.ijm`, `postprocessing.ijm` | the normalisation as ImageJ macros (used by DeepImageJ 2.1) |
| `fiji_macros/` | Fiji macros for running the model |
| `training_config.yaml` | the resolved training configuration (`w2sr export` only) |
| `parity.md`, `parity.json` | the validation below, as tables and as data |
| `generator.keras` | the Keras model (only in the bundle folder, not in the packages; not a weight format DeepImageJ reads) |
| `packages/{name}_deepimagej.zip` | this folder zipped for DeepImageJ (install dialog, or unzip into `Fiji.app/models/{name}/`) |
| `packages/{name}_zoo-0.5.zip` | **the file for the BioImage.IO model zoo** and bioimageio.core: format 0.5 package of the same weights. Not for DeepImageJ 3.1: JDLL 0.6.1 throws on the `documentation: {{source, sha256}}` that bioimageio.spec requires in 0.5, and reads the spec-correct output `scale: 0.5` as a multiplier (half-size output). Its processing (`scale_range` per sample; in fixed mode a scalar `fixed_zero_mean_unit_variance`) and `id` are written the way JDLL reads them, so only those two remain |

## Using it

**DeepImageJ 3.1 (Fiji)**: install `packages/{name}_deepimagej.zip` with DeepImageJ's
"Install model" dialog, or unzip it into `Fiji.app/models/{name}/`. Then, in a macro:

```
run("DeepImageJ Run", "model_path=[{name}] input_path=[/path/to/images] output_folder=[/path/to/out] display_output=[null]");
```

DeepImageJ 3.1 applies the rdf's pre- and postprocessing itself and tiles every image with
{tile} px tiles. Two limits of DeepImageJ 3.1 (JDLL 0.6.1, read in its source) for images smaller
than a tile: a side under {-(-tile // 3)} px is refused ("cannot be bigger than 3 times the image
size"), and a side under {tile - 2 * int(halo_info.get('halo') or 0)} px whose difference to {tile} is odd comes out shifted by
one output pixel. `fiji_macros/deepimagej_predict.ijm` (input: an image file or a folder) pads such
images with whole mirrored copies of themselves up to at least {tile - 2 * int(halo_info.get('halo') or 0)} px
(so their percentiles do not change) before DeepImageJ and crops the result, which avoids both. Fiji macros
shipped with the bundle:

{macro_list}

**DeepImageJ 2.1**: runs `tf_saved_model.zip` with its TensorFlow 1.15 and the two `.ijm` macros
(named under `config.deepimagej.prediction`).

**Python**: `w2sr predict {name}/ images/ --out restored/` (tiled, any image size; it reads
`config.w2sr.network.any_size_from`). **bioimageio.core**: use the zoo package,
`bioimageio predict --inputs image.tif packages/*_zoo-0.5.zip` (or `bioimageio.core.predict`): it takes
any size from {network['any_size_from']} px and runs the whole image, which the graph pads itself (no
halo is declared there, so do not add `--blockwise`: its blocks would show seams). `rdf.yaml` takes only
{tile} x {tile} inputs in `bioimageio predict`. Core takes percentiles by numpy's interpolation; on
small images that differs slightly from DeepImageJ and `w2sr predict` (within the zoo tolerance on
512 x 512; details in the project's `docs/consumers.md`).

## Validation

{validation_md}

## References

{cites}
"""
