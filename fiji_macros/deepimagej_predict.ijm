// deepimagej_predict.ijm - run a w2sr bundle (the W2S model: denoise + 2x super-resolve; or any model
// bundled with w2sr bundle) on one image, or every image of a folder, with DeepImageJ 3.1+.
// Each image (8/16/32-bit; 2D, stack or hyperstack) is run plane by plane and saved as OUTPUT/<name>_sr.tif:
// 32-bit, the model's scale times the width and height (2x for W2S), pixel size divided by it, same
// stack layout. Inputs are never written to.
// Arguments (key=value, values with spaces in [brackets]); without any, a dialog asks for them:
//   model=[folder with rdf.yaml: absolute, or a folder name in Fiji.app/models]
//   input=[an image file, or a folder of images (not recursive)]   output=[a folder, not the input's]
//   overwrite=true   replace existing _sr.tif files (default: skip them in a folder, stop for an image file)
// Headless: ImageJ-linux64 --headless --console -macro deepimagej_predict.ijm "model=[...] input=[...] output=[...]"
// What counts as done / skipped / failed, what is checked, and how it was tested (ImageJ 1.53t with a
// stand-in for DeepImageJ, not yet in a real Fiji): fiji_macros/README.md.

requires("1.53t"); // the version it was tested with (Fiji ships a newer one)

// ==== what you may need to edit ==================================================================
var OUTPUT_SUFFIX = "_sr.tif";
var IMAGE_EXTENSIONS = newArray(".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif", ".bmp"); // ImageJ's readers
// DeepImageJ on every file (a 32-bit plane) of folder inDir: it writes <file>_<output name>.tif into outDir.
// This is DeepImageJ 3.1's syntax (July 2025). 3.0.x (Nov 2024 - July 2025) has the same keys in camelCase:
//   "modelPath=[" + model + "] inputPath=[" + inDir + "] outputFolder=[" + outDir + "] displayOutput=null"
// 2.1.x and older 3.0.x run on the ACTIVE image and open the result ("model=[<name in its list>]
// format=Tensorflow preprocessing=[preprocessing.ijm] postprocessing=[postprocessing.ijm] axes=Y,X,C
// tile=256,256,1 logging=normal", tile = min + n*step of the rdf): predictImage must then go plane by plane.
// Files, not the active image (input_path=null): DeepImageJ 3.1 shows that result later (invokeLater) but
// writes files before run() returns. It logs its errors and goes on: predictImage looks for the files.
function runDeepImageJ(model, inDir, outDir) {
    run("DeepImageJ Run", "model_path=[" + model + "] input_path=[" + inDir + "] output_folder=[" + outDir + "] display_output=null");
}
// =================================================================================================

var SKIP = "SKIP: "; // prefix of predictImage's reasons to skip (not fail) an image
var PLANE = "w2sr_plane_"; // DeepImageJ's input files: TMP/in/w2sr_plane_000001.tif, ...
var OUT_PLANE = "w2sr_result_plane_";
var MODEL = ""; var TILE = -1; var HALO = -1; // the model folder; its rdf's deepimagej_tile / _halo
var SCALE = 2; var MULTIPLE = 1; var PERCENTILES = true; // output/input side, pooling grid, per-image percentiles
var TMP = ""; // a fresh folder in ImageJ's temp folder, removed at the end

arg = getArgument();
interactive = (arg == "");
if (interactive) {
    proposed = ""; // the active image's file, if it has one
    if (nImages > 0) if (getInfo("image.filename") != "") proposed = getInfo("image.directory") + getInfo("image.filename");
    Dialog.create("w2sr: DeepImageJ super-resolution");
    Dialog.addDirectory("Model folder (with rdf.yaml)", getDirectory("imagej") + "models" + File.separator);
    Dialog.addFile("Input image file or folder", proposed);
    Dialog.addMessage("Browse picks an image file; for every image of a folder, type or drop the folder.");
    Dialog.addDirectory("Output folder", "");
    Dialog.addCheckbox("Overwrite existing " + OUTPUT_SUFFIX + " files", false);
    Dialog.show();
    model = Dialog.getString(); input = Dialog.getString(); output = Dialog.getString(); overwrite = Dialog.getCheckbox();
} else {
    model = argValue("model"); input = argValue("input"); output = argValue("output");
    overwrite = matches(toLowerCase(argValue("overwrite")), "true|1|yes");
}

// ---- fatal problems stop the macro before anything is written
MODEL = resolveModel(model);
TILE = rdfNumber("deepimagej_tile");
HALO = rdfNumber("deepimagej_halo");
SCALE = maxOf(1, rdfNumber("deepimagej_scale")); if (rdfNumber("deepimagej_scale") < 0) SCALE = 2; // older bundles: 2x
MULTIPLE = maxOf(1, rdfNumber("size_multiple"));
PERCENTILES = indexOf(File.openAsString(MODEL + File.separator + "rdf.yaml"), "name: scale_range") >= 0;
if (input == "") exit("No input given (input=[/path/to/image.tif] or input=[/path/to/folder]).");
if (!File.exists(input) && isImageName(input)) exit("Input image not found: " + input);
if (!File.exists(input)) exit("Input folder not found: " + input);
folderMode = File.isDirectory(input); // else one image file
inDir = File.getDirectory(input);
if (folderMode) inDir = withSlash(input);
else if (!isImageName(input)) exit("Not an image file: " + input + " (expected " + String.join(IMAGE_EXTENSIONS, " ") + ")");
if (output == "") exit("No output folder given (output=[/path/for/results]).");
output = withSlash(output);
checkNotSameFolder(inDir, output);
List.setCommands;
if (List.get("DeepImageJ Run") == "")
    exit("DeepImageJ is not installed (no command \"DeepImageJ Run\"): install it from the update site 'DeepImageJ' (version 3.1 or newer).");
List.clear();
skipped = newArray(0);
images = newArray(File.getName(input));
if (folderMode) {
    files = getFileList(inDir);
    Array.sort(files);
    images = newArray(0);
    for (i = 0; i < files.length; i++) {
        if (endsWith(files[i], "/") || startsWith(files[i], ".")) continue; // folders, hidden files: not inputs
        if (isImageName(files[i])) images = Array.concat(images, files[i]);
        else { print("skipped " + files[i] + ": not an image file"); skipped = Array.concat(skipped, files[i]); }
    }
    if (images.length == 0) exit("No image files in " + inDir + " (looked for " + String.join(IMAGE_EXTENSIONS, " ") + ").");
} else {
    outPath = output + File.getNameWithoutExtension(input) + OUTPUT_SUFFIX;
    if (File.exists(outPath) && !overwrite) // && does not short-circuit in the macro language
        if (outputIsGood(outPath)) exit("Output exists: " + outPath + " (overwrite=true to replace it).");
}
if (!File.isDirectory(output)) File.makeDirectory(output);
if (!File.isDirectory(output)) exit("Cannot create the output folder: " + output);
TMP = getDirectory("temp") + "w2sr_dij_" + d2s(getTime(), 0) + "_" + d2s(random * 1e6, 0) + File.separator;
File.makeDirectory(TMP);
if (!File.isDirectory(TMP)) exit("Cannot create a temporary folder in " + getDirectory("temp"));

// ---- the images, one by one
batchWas = is("Batch Mode");
setBatchMode(true);
if (folderMode) print("w2sr batch: " + images.length + " image(s) from " + inDir + " -> " + output);
else print("w2sr: " + input + " -> " + outPath);
print("model: " + MODEL);
nDone = 0; failed = newArray(0); err = ""; t0 = getTime();
for (i = 0; i < images.length; i++) {
    name = images[i];
    outPath = output + File.getNameWithoutExtension(name) + OUTPUT_SUFFIX;
    tag = ""; // a folder's Log lines start with [i/N]
    if (folderMode) tag = "[" + (i + 1) + "/" + images.length + "] ";
    if (File.exists(outPath) && !overwrite) { // an existing result counts as done only if it is a good one
        if (outputIsGood(outPath)) {
            print(tag + "skipped " + name + ": " + outPath + " exists (overwrite=true to replace)");
            skipped = Array.concat(skipped, name);
            continue;
        }
        print(tag + outPath + " exists but holds NaN/Inf or is unreadable (an earlier bad run): replacing it");
    }
    t1 = getTime();
    showProgress(i, images.length);
    err = processFile(inDir + name, outPath);
    if (err == "") {
        nDone++;
        print(tag + "done " + name + " -> " + outPath + " (" + d2s((getTime() - t1) / 1000, 1) + " s)");
    } else if (startsWith(err, SKIP)) {
        skipped = Array.concat(skipped, name);
        if (folderMode) print(tag + "WARNING: skipped " + name + ": " + substring(err, lengthOf(SKIP)));
    } else {
        failed = Array.concat(failed, name);
        if (folderMode) print(tag + "FAILED " + name + ": " + err);
    }
}
removeFolder(TMP);
setBatchMode(batchWas);
showProgress(1, 1);
if (!folderMode) { // an image file: its problem is the exit message
    if (startsWith(err, SKIP)) exit("SKIPPED " + name + ": " + substring(err, lengthOf(SKIP)));
    if (err != "") exit("FAILED " + name + ": " + err);
    if (interactive) open(outPath);
} else {
    print("Summary: " + nDone + " done, " + skipped.length + " skipped, " + failed.length + " failed (" + d2s((getTime() - t0) / 1000, 1) + " s)");
    if (skipped.length > 0) print("  skipped: " + String.join(skipped, " "));
    if (failed.length > 0) {
        print("  failed: " + String.join(failed, " "));
        exit("" + failed.length + " of " + images.length + " image(s) failed: " + String.join(failed, " ") + " (reasons in the Log)");
    }
}

// ---- checks -------------------------------------------------------------------------------------

// Value of key in the "key=value key2=[value 2]" argument ("" when absent).
function argValue(key) { return call("ij.Macro.getValue", getArgument() + " ", key, ""); }

function withSlash(dir) {
    if (!endsWith(dir, "/") && !endsWith(dir, File.separator)) dir = dir + File.separator;
    return dir;
}

function isImageName(name) {
    for (k = 0; k < IMAGE_EXTENSIONS.length; k++)
        if (endsWith(toLowerCase(name), IMAGE_EXTENSIONS[k])) return true;
    return false;
}

// The model folder: as given, or inside Fiji.app/models; stops the macro when there is none.
function resolveModel(model) {
    if (model == "") exit("No model given (model=[/path/to/model folder with rdf.yaml]).");
    if (endsWith(toLowerCase(model), ".zip"))
        exit("Model " + model + " is a zip: unzip it into Fiji.app/models (or install it with DeepImageJ) and give the folder.");
    inModels = getDirectory("imagej") + "models" + File.separator + model;
    if (!File.isDirectory(model) && File.isDirectory(inModels)) model = inModels;
    if (!File.isDirectory(model)) exit("Model not found: " + model + " (give the model folder, absolute or inside Fiji.app/models).");
    if (endsWith(model, "/") || endsWith(model, File.separator)) model = substring(model, 0, lengthOf(model) - 1);
    if (!File.exists(model + File.separator + "rdf.yaml")) exit("Not a model folder (no rdf.yaml): " + model);
    return model;
}

// Stops when the output folder is the input folder, also under another name (a link, "..").
function checkNotSameFolder(input, output) {
    if (File.getAbsolutePath(input) == File.getAbsolutePath(output)) // Java drops a trailing separator
        exit("The output folder is the input folder (" + input + "); choose another output folder.");
    if (!File.isDirectory(output)) return;
    probe = ".w2sr_probe_" + d2s(getTime(), 0) + "_" + d2s(random * 1e6, 0); // seen from the other side?
    File.saveString("probe", output + probe);
    same = File.exists(input + probe);
    ok = File.delete(output + probe);
    if (same) exit("The output folder is the input folder (" + output + " is " + input + "); choose another output folder.");
}

// "" when the first bytes are those of the format the extension claims, else why not (ImageJ's own
// error would be a dialog; a truncated TIFF it opens silently, with zeros).
function headerProblem(path) {
    if (File.length(path) == 0) return "empty file";
    s = File.openAsRawString(path, 8);
    if (lengthOf(s) < 4) return "file too short to be an image";
    hex = ""; // the first 4 bytes
    for (k = 0; k < 4; k++) hex = hex + IJ.pad(toHex(charCodeAt(s, k)), 2);
    lower = toLowerCase(path);
    isTiff = endsWith(lower, ".tif") || endsWith(lower, ".tiff");
    if (isTiff && matches(hex, "49492b..|4d4d..2b"))
        return "BigTIFF, which ImageJ 1 cannot open (open it with Bio-Formats and save as TIFF)";
    kind = "";
    magic = ".*"; // other extensions: not checked
    if (isTiff) { kind = "TIFF"; magic = "49492a00|4d4d002a"; }
    if (endsWith(lower, ".png")) { kind = "PNG"; magic = "89504e47"; }
    if (endsWith(lower, ".jpg") || endsWith(lower, ".jpeg")) { kind = "JPEG"; magic = "ffd8...."; }
    if (endsWith(lower, ".gif")) { kind = "GIF"; magic = "474946.."; }
    if (endsWith(lower, ".bmp")) { kind = "BMP"; magic = "424d...."; }
    if (!matches(hex, magic)) return "not a " + kind + " file (bad header)";
    if (!isTiff) return "";
    truncation = tiffTruncation(path, startsWith(hex, "49")); // "return f(...)" wants a number
    return truncation;
}

// The unsigned integer of n bytes at p of a raw string, little- or big-endian.
function uint(b, p, n, le) {
    v = 0;
    for (k = 0; k < n; k++) {
        if (le) v = v + charCodeAt(b, p + k) * pow(256, k);
        else v = v * 256 + charCodeAt(b, p + k);
    }
    return v;
}

// "" unless the first image of a TIFF points past the end of the file (a truncated copy): reads the
// first IFD's StripOffsets (tag 273) and StripByteCounts (279), within the first MB.
function tiffTruncation(path, le) {
    b = File.openAsRawString(path, 1048576);
    ifd = uint(b, 4, 4, le);
    if (ifd + 2 > lengthOf(b)) return ""; // the directory lies beyond what is read here: not checked
    offsets = -1; counts = -1; nStrips = 0; offWide = 4; cntWide = 4;
    for (k = 0; k < uint(b, ifd, 2, le) && ifd + 14 + 12 * k <= lengthOf(b); k++) {
        e = ifd + 2 + 12 * k;
        tag = uint(b, e, 2, le);
        wide = 4;
        if (uint(b, e + 2, 2, le) == 3) wide = 2; // SHORT values, else LONG
        where = e + 8; // the values, when they fit in 4 bytes; else where they are
        if (uint(b, e + 4, 4, le) * wide > 4) where = uint(b, e + 8, 4, le);
        if (tag == 273) { offsets = where; nStrips = uint(b, e + 4, 4, le); offWide = wide; }
        if (tag == 279) { counts = where; cntWide = wide; }
    }
    if (offsets < 0 || counts < 0 || offsets + nStrips * offWide > lengthOf(b) || counts + nStrips * cntWide > lengthOf(b))
        return "";
    for (k = 0; k < nStrips; k++) {
        end = uint(b, offsets + offWide * k, offWide, le) + uint(b, counts + cntWide * k, cntWide, le);
        if (end > File.length(path))
            return "truncated TIFF: its image data runs to byte " + end + " but the file has " + File.length(path) + " bytes";
    }
    return "";
}

// "" unless the open image is a TIFF written with more than 3 dimensions by another program (tifffile:
// ImageDescription {"shape": [...]}): ImageJ 1 reads it as one flat stack, its planes mixed up.
function flattenedShape() {
    info = getMetadata("Info");
    k = indexOf(info, "{\"shape\": [");
    if (k < 0 || nSlices == 1) return "";
    dims = split(substring(info, k + 11, indexOf(info, "]", k)), ", ");
    if (dims.length <= 3) return "";
    return "a " + dims.length + "-D array (shape [" + String.join(dims, ", ") + "]) that ImageJ reads as one flat stack of " + nSlices + " planes; save it as an ImageJ hyperstack or 2D/3D TIFF";
}

// Whether an existing result file is one to keep: it opens, is 32-bit and finite in every plane.
function outputIsGood(path) {
    mine = nImages;
    IJ.redirectErrorMessages();
    open(path);
    if (nImages == mine) return false;
    good = bitDepth() == 32;
    for (k = 1; k <= nSlices && good; k++) {
        setSlice(k);
        getRawStatistics(nFinite);
        good = nFinite == getWidth() * getHeight(); // ImageJ leaves NaN and +-Inf out of the count
    }
    close();
    return good;
}

// A number written as "key: N" on a line of the model's rdf.yaml (-1 when absent); the w2sr exporter
// writes config.w2sr.network.deepimagej_tile / deepimagej_halo that way.
function rdfNumber(key) {
    lines = split(File.openAsString(MODEL + File.separator + "rdf.yaml"), "\n");
    for (k = 0; k < lines.length; k++) {
        t = replace(lines[k], " ", "");
        if (startsWith(t, key + ":")) return parseInt(substring(t, lengthOf(key) + 1));
    }
    return -1;
}

// "" when DeepImageJ 3.1 (JDLL 0.6.1) can run a width x height plane, else why not. JDLL holds the whole
// 2x output in one array (at most 2^31 - 1 pixels); and when the rdf lets the tile grow with the image
// (no deepimagej_tile: older bundles), a tile above 4096*4096*3 pixels sends its
// TileCalculator.checkOutputSize into a loop that never returns.
function deepImageJLimit(width, height) {
    use = " - use 'w2sr predict' (Python, tiled, any size) for this image";
    if (1.0 * SCALE * SCALE * width * height > 2147483647)
        return "" + width + "x" + height + " is too large for DeepImageJ 3.1: its " + SCALE + "x output would exceed 2^31-1 pixels, the largest image JDLL and ImageJ hold" + use;
    h = maxOf(0, HALO);
    if (h == 0) h = 32; // unknown halo: a generous guess
    if (TILE <= 0 && (width + 2.0 * h) * (height + 2.0 * h) > 4096.0 * 4096 * 3)
        return "" + width + "x" + height + " is above DeepImageJ 3.1's limit for this model: JDLL 0.6.1 takes the whole image as one tile and never returns above 4096*4096*3 pixels" + use;
    return "";
}

// ---- the prediction -----------------------------------------------------------------------------

// Predicts every plane of one file into outPath; returns "" or why not (SKIP + why: skipped, not failed).
// Images that were open before (the user's, in the GUI) are left alone.
function processFile(path, outPath) {
    problem = headerProblem(path);
    if (problem != "") return "cannot read " + path + ": " + problem;
    mine = " "; // the IDs of the images open now
    for (k = 1; k <= nImages; k++) { selectImage(k); mine = mine + getImageID() + " "; }
    before = nImages;
    IJ.redirectErrorMessages();
    open(path);
    if (nImages == before) return "ImageJ cannot open " + path + " (unreadable or unsupported image)";
    err = predictImage(getImageID(), outPath);
    for (k = nImages; k >= 1; k--) { // close what this image left open
        selectImage(k);
        if (indexOf(mine, " " + getImageID() + " ") < 0) close();
    }
    return err;
}

// Super-resolves image src plane by plane and saves the assembled result to outPath. All planes go to
// DeepImageJ in one call (a folder of 32-bit plane files), so the model is loaded once per image.
function predictImage(src, outPath) {
    selectImage(src);
    if (bitDepth() == 24) return "RGB colour image: the model takes one channel (convert to 8/16/32-bit grayscale first)";
    getDimensions(width, height, channels, slices, frames);
    shapeProblem = flattenedShape();
    if (shapeProblem != "") return shapeProblem;
    tooLarge = deepImageJLimit(width, height);
    if (tooLarge != "") return SKIP + tooLarge;
    canvasW = paddedSide(width); canvasH = paddedSide(height);
    getVoxelSize(pw, ph, pd, unit);
    Stack.getUnits(unit, yUnit, zUnit, timeUnit, valueUnit); // "micron", where getVoxelSize says "microns"
    frameInterval = Stack.getFrameInterval();
    n = nSlices;
    tmpIn = TMP + "in" + File.separator;
    tmpOut = TMP + "out" + File.separator;
    removeFolder(tmpIn); // an earlier image's files must not be taken for this one's
    removeFolder(tmpOut);
    File.makeDirectory(tmpIn); File.makeDirectory(tmpOut);
    for (plane = 1; plane <= n; plane++) {
        selectImage(src);
        setSlice(plane);
        run("Select None");
        run("Duplicate...", "title=w2sr_in");
        if (nSlices != 1) return "could not take plane " + plane + " out of the stack";
        run("32-bit"); // older DeepImageJ normalised 8/16-bit images on their integer type: black output
        getRawStatistics(nFinite);
        if (nFinite < getWidth() * getHeight()) { // ImageJ leaves NaN and +-Inf out of the count
            where = ""; if (n > 1) where = " in plane " + plane + " of " + n;
            return "holds NaN or Inf values" + where + " (" + (getWidth() * getHeight() - nFinite) + " pixels); the model needs finite numbers";
        }
        mirrorPadTo(canvasW, canvasH);
        saveAs("Tiff", tmpIn + PLANE + IJ.pad(plane, 6) + ".tif");
        close();
    }
    runDeepImageJ(MODEL, tmpIn, tmpOut);
    produced = getFileList(tmpOut);
    for (plane = 1; plane <= n; plane++) { // each plane's <plane file>_<output name>.tif, preferring "_output"
        prefix = PLANE + IJ.pad(plane, 6) + "_";
        result = "";
        for (k = 0; k < produced.length; k++)
            if (startsWith(produced[k], prefix) && endsWith(produced[k], ".tif"))
                if (result == "" || produced[k] == prefix + "output.tif") result = produced[k];
        if (result == "") {
            where = ""; if (n > 1) where = " for plane " + plane + " of " + n;
            return "DeepImageJ Run wrote no output" + where + "; its error is in the Log / Console (DeepImageJ 3.1 or newer? does the model run on this image?)";
        }
        open(tmpOut + result);
        if (getWidth() != SCALE * canvasW || getHeight() != SCALE * canvasH || bitDepth() != 32)
            return "unexpected model output " + getWidth() + "x" + getHeight() + ", " + bitDepth() + "-bit (expected " + (SCALE * canvasW) + "x" + (SCALE * canvasH) + ", 32-bit): is this a w2sr bundle of a " + SCALE + "x model?";
        if (canvasW != width || canvasH != height) { // drop what the mirror padding added
            makeRectangle(0, 0, SCALE * width, SCALE * height); run("Crop"); run("Select None");
        }
        rename(OUT_PLANE + IJ.pad(plane, 6));
    }
    if (n > 1) { // the result planes, in the order they were opened, become one stack
        run("Images to Stack", "name=w2sr_result title=" + OUT_PLANE + " use");
        if (nSlices != n) return "could not assemble the " + n + " result planes into a stack";
        Stack.setDimensions(channels, slices, frames);
        if (frames > 1 && frameInterval > 0) Stack.setFrameInterval(frameInterval);
        setSlice(1);
    }
    setVoxelSize(pw / SCALE, ph / SCALE, pd, unit); // DeepImageJ's output has no calibration
    resetMinAndMax();
    // written beside the target under a temporary name, then renamed: no half-written _sr.tif
    partial = File.getDirectory(outPath) + "." + File.getNameWithoutExtension(outPath) + ".partial.tif";
    saveAs("Tiff", partial);
    if (File.exists(outPath)) ok = File.delete(outPath);
    if (File.rename(partial, outPath)) return "";
    ok = File.delete(partial);
    return "cannot write " + outPath;
}

// The side a plane is mirror-padded to: a side shorter than tile - 2*halo becomes the smallest whole
// number of mirrored copies of itself that reaches tile - 2*halo. JDLL 0.6.1 refuses a tile over 3x the
// image side and, when tile - side is odd, shifts such an output by one pixel: this avoids both, and
// whole copies keep the image's percentiles (w2sr.bundle.jdll.macro_canvas, fiji_macros/README.md).
// A pooling network (size_multiple m > 1) needs a side divisible by m (JDLL's tiles then keep its grid):
// whole copies, as few as are divisible by m, with percentiles; without, the mirror reaching a halo
// beyond the image, up to a multiple of m.
function paddedSide(side) {
    need = TILE - 2 * maxOf(HALO, 0);
    if (TILE <= 0) return side;
    if (MULTIPLE == 1 || PERCENTILES) {
        k = 1;
        if (side < need) k = Math.ceil(need / side);
        while ((k * side) % MULTIPLE != 0) k++;
        return k * side;
    }
    if (side % MULTIPLE == 0 && side >= need) return side;
    c = maxOf(need, side + maxOf(HALO, 0));
    return c + (MULTIPLE - c % MULTIPLE) % MULTIPLE;
}

// Pads the active single-plane image at the bottom and right to w x h with its mirror image (numpy
// "symmetric": the edge pixel repeated), as w2sr.bundle.jdll.predict_like_macro does.
function mirrorPadTo(w, h) {
    sw = getWidth(); sh = getHeight();
    if (w == sw && h == sh) return;
    run("Canvas Size...", "width=" + w + " height=" + h + " position=Top-Left zero");
    for (y = 0; y < h; y++)
        for (x = 0; x < w; x++)
            if (x >= sw || y >= sh) setPixel(x, y, getPixel(mirror(x, sw), mirror(y, sh)));
}

function mirror(i, n) { // the index in 0..n-1 that i (>= 0) mirrors to
    i = i % (2 * n);
    if (i >= n) i = 2 * n - 1 - i;
    return i;
}

function removeFolder(dir) { // deletes folder dir with everything in it
    list = getFileList(dir);
    for (k = 0; k < list.length; k++) {
        if (endsWith(list[k], "/")) removeFolder(dir + list[k]);
        else ok = File.delete(dir + list[k]);
    }
    ok = File.delete(dir);
}
