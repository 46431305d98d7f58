// deepimagej_predict.ijm - denoise + 2x super-resolve one image, or every image of a folder, with DeepImageJ.
//
// For the w2sr bundle (rdf.yaml format 0.4.10) installed in Fiji with DeepImageJ 3.1 or newer.
// Each image (8-, 16- or 32-bit; 2D, stack or hyperstack) is processed plane by plane and saved as
// OUTPUT/<name>_sr.tif: 32-bit, twice the width and height, pixel size halved, same stack layout.
//
// HEADLESS (Fiji):
//   ImageJ-linux64 --headless --console -macro deepimagej_predict.ijm \
//       "model=[/path/to/Fiji.app/models/w2sr_bundle] input=[/data/widefield] output=[/data/sr]"
// Keys (key=value, separated by spaces; put values with spaces in [brackets]):
//   model      model folder (the unzipped bundle, with rdf.yaml): absolute path, or the name of a
//              folder inside Fiji.app/models
//   input      an image file, or a folder of images (not searched recursively)
//   output     folder for the results; created if missing; must not be the input (image's) folder
//   overwrite  true to replace existing <name>_sr.tif files (default false: in a folder they are
//              skipped; for an image file the macro stops instead)
// GUI: run it without arguments: a dialog asks for the paths (the active image's file is proposed;
// Browse picks a file, a folder can be typed or dropped on the field); an image file's result is
// opened when done.
//
// An image file: every problem (image unreadable, existing output, DeepImageJ failing or unable to
// run the image) stops the macro with exit("...") and a message; nothing else is written.
// A folder, what counts as what (one Log line per file, then a Summary line):
//   done     <name>_sr.tif written
//   skipped  not an image file (by extension), hidden file or folder, output exists (no overwrite),
//            or too large for DeepImageJ 3.1 (logged as a WARNING naming the file; use w2sr predict)
//   failed   an image file that cannot be opened or predicted: logged with the reason, the batch goes on
// When any file failed, the macro ends with exit("...") listing them, so a headless caller sees it.
// Fatal problems (no model, model folder without rdf.yaml, input missing, not an image file or a
// folder without images, output folder = the input's folder, DeepImageJ not installed) stop the
// macro with exit("...") before anything is written. Inputs are never written to.
//
// HOW THE MODEL IS CALLED (DeepImageJ 3.1 macro syntax, snake_case keys, since July 2025):
//   run("DeepImageJ Run", "model_path=[MODEL] input_path=[TMP/in] output_folder=[TMP/out] display_output=null");
// Every plane of the image is converted to 32-bit (DeepImageJ 3.1 copies to float itself; older
// versions normalised 8/16-bit images on their integer pixel type: "black output"), mirror-padded to
// one DeepImageJ tile when a side is shorter than tile - 2*halo (DeepImageJ 3.1 refuses sides under a
// third of the tile and shifts such outputs by one pixel when tile - side is odd; the padding is
// cropped off the result), and saved as TMP/in/w2sr_plane_000001.tif,
// ...; one call with input_path = that folder runs them all with the model loaded once, and
// DeepImageJ's results TMP/out/w2sr_plane_000001_<output name>.tif (output name "output" for the
// w2sr bundle) are read back in plane order, stacked, calibrated and saved. TMP is a fresh folder
// in ImageJ's temp folder, deleted at the end. The file/folder form is used rather than the
// active-image form (input_path=null) because DeepImageJ 3.1 shows that result window
// asynchronously (SwingUtilities.invokeLater): a macro cannot rely on it existing when run()
// returns, while the saved files are written before. DeepImageJ 3.1 reports its own errors in the
// Log/Console and does not stop the macro: a missing output file is what the macro checks.
// Other DeepImageJ versions (change the run(...) line in predictImage() below):
//   3.0.x after Nov 2024 - July 2025: the same keys in camelCase:
//     run("DeepImageJ Run", "modelPath=[MODEL] inputPath=[TMP/in] outputFolder=[TMP/out] displayOutput=null");
//   2.1.x / 3.0.x before: runs on the ACTIVE image and opens the result as a new image:
//     run("DeepImageJ Run", "model=[<the model's name in DeepImageJ's list>] format=Tensorflow
//         preprocessing=[preprocessing.ijm] postprocessing=[postprocessing.ijm] axes=Y,X,C
//         tile=256,256,1 logging=normal");
//     (the bundle ships these two macros for 2.x; tile must be min + n*step of the rdf.) With that
//     form, process one plane at a time: make the 32-bit plane the active image, run, and take
//     the newly opened image as the result instead of reading files back.
//
// Tested here with ImageJ 1.53t and a stand-in for "DeepImageJ Run" (see fiji_macros/README.md);
// not yet run in a real Fiji + DeepImageJ installation.

requires("1.53t"); // the version it was tested with (Fiji ships a newer one)

var OUTPUT_SUFFIX = "_sr.tif";
var IMAGE_EXTENSIONS = newArray(".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif", ".bmp");
var TMP_PLANE = "w2sr_plane_";
var OUT_PLANE = "w2sr_result_plane_";
var SKIP = "SKIP: "; // prefix of predictImage's reasons to skip (not fail) an image

arg = getArgument();
interactive = (arg == "");
if (interactive) {
    proposed = ""; // the active image's file, if it has one
    if (nImages > 0)
        if (getInfo("image.filename") != "")
            proposed = getInfo("image.directory") + getInfo("image.filename");
    Dialog.create("w2sr: DeepImageJ super-resolution");
    Dialog.addDirectory("Model folder (with rdf.yaml)", getDirectory("imagej") + "models" + File.separator);
    Dialog.addFile("Input image file or folder", proposed);
    Dialog.addMessage("Browse picks an image file; for every image of a folder, type or drop the folder.");
    Dialog.addDirectory("Output folder", "");
    Dialog.addCheckbox("Overwrite existing _sr.tif files", false);
    Dialog.show();
    model = Dialog.getString();
    input = Dialog.getString();
    output = Dialog.getString();
    overwrite = Dialog.getCheckbox();
} else {
    model = argValue(arg, "model");
    input = argValue(arg, "input");
    output = argValue(arg, "output");
    overwrite = isTrue(argValue(arg, "overwrite"));
}

model = resolveModel(model);
if (input == "")
    exit("No input given (input=[/path/to/image.tif] or input=[/path/to/folder]).");
if (!File.exists(input)) { // named like an image: a missing image, else a missing folder
    if (isImageName(input))
        exit("Input image not found: " + input);
    exit("Input folder not found: " + input);
}
folderMode = File.isDirectory(input); // else one image file, as DeepImageJ 3.1's input_path
if (folderMode) {
    inDir = withSlash(input);
} else {
    inDir = File.getDirectory(input);
    if (!isImageName(File.getName(input)))
        exit("Not an image file: " + input + " (expected " + String.join(IMAGE_EXTENSIONS, " ") + ")");
}
if (output == "")
    exit("No output folder given (output=[/path/for/results]).");
output = withSlash(output);
checkNotSameFolder(inDir, output);
checkDeepImageJInstalled();

nSkipped = 0;
skippedNames = "";
if (folderMode) {
    files = getFileList(inDir);
    Array.sort(files);
    images = newArray(0);
    for (i = 0; i < files.length; i++) {
        f = files[i];
        if (endsWith(f, "/") || startsWith(f, ".")) {
            continue; // folders and hidden files are not inputs
        }
        if (!isImageName(f)) {
            print("skipped " + f + ": not an image file");
            nSkipped++;
            skippedNames = skippedNames + " " + f;
        } else {
            images = Array.concat(images, f);
        }
    }
    if (images.length == 0)
        exit("No image files in " + inDir + " (looked for " + String.join(IMAGE_EXTENSIONS, " ") + ").");
} else {
    images = newArray(File.getName(input));
    outPath = output + File.getNameWithoutExtension(images[0]) + OUTPUT_SUFFIX;
    if (File.exists(outPath) && !overwrite) // an image file's good result stops the macro here
        if (outputIsGood(outPath)) // && does not short-circuit in the macro language
            exit("Output exists: " + outPath + " (overwrite=true to replace it).");
}

if (!File.isDirectory(output))
    File.makeDirectory(output);
if (!File.isDirectory(output))
    exit("Cannot create the output folder: " + output);

tmp = makeTempFolder();
batchWas = is("Batch Mode");
setBatchMode(true);
if (folderMode)
    print("w2sr batch: " + images.length + " image(s) from " + inDir + " -> " + output);
else
    print("w2sr: " + input + " -> " + outPath);
print("model: " + model);
nDone = 0;
nFailed = 0;
failedNames = "";
err = "";
t0 = getTime();
for (i = 0; i < images.length; i++) {
    name = images[i];
    outPath = output + File.getNameWithoutExtension(name) + OUTPUT_SUFFIX;
    tag = ""; // a folder's Log lines start with [i/N]
    if (folderMode)
        tag = "[" + (i + 1) + "/" + images.length + "] ";
    keep = false; // an existing result counts as done only if it is a good one (&& does not short-circuit)
    if (File.exists(outPath) && !overwrite) {
        keep = outputIsGood(outPath);
        if (!keep)
            print(tag + outPath + " exists but holds NaN/Inf or is unreadable (an earlier bad run): replacing it");
    }
    if (keep) {
        print(tag + "skipped " + name + ": " + outPath + " exists (overwrite=true to replace)");
        nSkipped++;
        skippedNames = skippedNames + " " + name;
        continue;
    }
    t1 = getTime();
    showProgress(i, images.length);
    err = processFile(inDir + name, outPath, model, tmp);
    if (err == "") {
        nDone++;
        print(tag + "done " + name + " -> " + outPath + " (" + d2s((getTime() - t1) / 1000, 1) + " s)");
    } else if (startsWith(err, SKIP)) {
        nSkipped++;
        skippedNames = skippedNames + " " + name;
        if (folderMode)
            print(tag + "WARNING: skipped " + name + ": " + substring(err, lengthOf(SKIP)));
    } else {
        nFailed++;
        failedNames = failedNames + " " + name;
        if (folderMode)
            print(tag + "FAILED " + name + ": " + err);
    }
}
removeTempFolder(tmp);
setBatchMode(batchWas);
showProgress(1, 1);
if (!folderMode) { // an image file: its problem is the exit message
    if (startsWith(err, SKIP))
        exit("SKIPPED " + name + ": " + substring(err, lengthOf(SKIP)));
    if (err != "")
        exit("FAILED " + name + ": " + err);
    if (interactive)
        open(outPath);
} else {
    print("Summary: " + nDone + " done, " + nSkipped + " skipped, " + nFailed + " failed (" + d2s((getTime() - t0) / 1000, 1) + " s)");
    if (nSkipped > 0)
        print("  skipped:" + skippedNames);
    if (nFailed > 0) {
        print("  failed:" + failedNames);
        exit("" + nFailed + " of " + images.length + " image(s) failed:" + failedNames + " (reasons in the Log)");
    }
}

// ---- functions ----

// Value of key in a "key=value key2=[value 2]" argument string ("" when absent).
function argValue(args, key) {
    return call("ij.Macro.getValue", args + " ", key, "");
}

function isTrue(v) {
    v = toLowerCase(v);
    if (v == "true" || v == "1" || v == "yes")
        return true;
    return false;
}

function withSlash(dir) {
    if (!endsWith(dir, "/") && !endsWith(dir, File.separator))
        dir = dir + File.separator;
    return dir;
}

// The model folder: as given, or inside Fiji.app/models; stops the macro when there is none.
function resolveModel(model) {
    if (model == "")
        exit("No model given (model=[/path/to/model folder with rdf.yaml]).");
    if (endsWith(toLowerCase(model), ".zip"))
        exit("Model " + model + " is a zip: unzip it into Fiji.app/models (or install it with DeepImageJ) and give the folder.");
    if (!File.isDirectory(model)) {
        inModels = getDirectory("imagej") + "models" + File.separator + model;
        if (File.isDirectory(inModels))
            model = inModels;
        else
            exit("Model not found: " + model + " (give the model folder, absolute or inside Fiji.app/models).");
    }
    if (endsWith(model, "/") || endsWith(model, File.separator))
        model = substring(model, 0, lengthOf(model) - 1);
    if (!File.exists(model + File.separator + "rdf.yaml"))
        exit("Not a model folder (no rdf.yaml): " + model);
    return model;
}

// Refuses an output folder that is the input folder (inputs are never overwritten).
function checkNotSameFolder(input, output) {
    a = File.getAbsolutePath(input);
    b = File.getAbsolutePath(output);
    if (endsWith(a, File.separator)) a = substring(a, 0, lengthOf(a) - 1);
    if (endsWith(b, File.separator)) b = substring(b, 0, lengthOf(b) - 1);
    if (a == b)
        exit("The output folder is the input folder (" + input + "); choose another output folder.");
    // the same folder under another name (link, "..", "./"): look for a probe file from the other side
    if (File.isDirectory(output)) {
        probe = ".w2sr_probe_" + d2s(getTime(), 0) + "_" + d2s(random * 1e6, 0);
        File.saveString("probe", output + probe);
        same = File.exists(input + probe);
        ok = File.delete(output + probe);
        if (same)
            exit("The output folder is the input folder (" + output + " is " + input + "); choose another output folder.");
    }
}

function checkDeepImageJInstalled() {
    List.setCommands;
    if (List.get("DeepImageJ Run") == "")
        exit("DeepImageJ is not installed (no command \"DeepImageJ Run\"): install it from the update site 'DeepImageJ' (version 3.1 or newer).");
    List.clear();
}

function isImageName(name) {
    lower = toLowerCase(name);
    for (k = 0; k < IMAGE_EXTENSIONS.length; k++)
        if (endsWith(lower, IMAGE_EXTENSIONS[k]))
            return true;
    return false;
}

// "" when the first bytes look like the format the extension claims, else the reason.
function headerProblem(path) {
    if (File.length(path) == 0)
        return "empty file";
    s = File.openAsRawString(path, 8);
    if (lengthOf(s) < 4)
        return "file too short to be an image";
    c0 = charCodeAt(s, 0); c1 = charCodeAt(s, 1); c2 = charCodeAt(s, 2); c3 = charCodeAt(s, 3);
    lower = toLowerCase(path);
    if (endsWith(lower, ".tif") || endsWith(lower, ".tiff")) {
        if ((c0 == 73 && c1 == 73 && c2 == 42 && c3 == 0) || (c0 == 77 && c1 == 77 && c2 == 0 && c3 == 42))
        {
            littleEndian = (c0 == 73);
            truncation = tiffTruncation(path, littleEndian); // ImageJ: "return f(...)" wants a number here
            return truncation;
        }
        if ((c0 == 73 && c1 == 73 && c2 == 43) || (c0 == 77 && c1 == 77 && c3 == 43))
            return "BigTIFF, which ImageJ 1 cannot open (open it with Bio-Formats and save as TIFF)";
        return "not a TIFF file (bad header)";
    }
    if (endsWith(lower, ".png")) {
        if (c0 == 137 && c1 == 80 && c2 == 78 && c3 == 71) return "";
        return "not a PNG file (bad header)";
    }
    if (endsWith(lower, ".jpg") || endsWith(lower, ".jpeg")) {
        if (c0 == 255 && c1 == 216) return "";
        return "not a JPEG file (bad header)";
    }
    if (endsWith(lower, ".gif")) {
        if (c0 == 71 && c1 == 73 && c2 == 70) return "";
        return "not a GIF file (bad header)";
    }
    if (endsWith(lower, ".bmp")) {
        if (c0 == 66 && c1 == 77) return "";
        return "not a BMP file (bad header)";
    }
    return "";
}

function makeTempFolder() {
    tmp = getDirectory("temp") + "w2sr_dij_" + d2s(getTime(), 0) + "_" + d2s(random * 1e6, 0) + File.separator;
    File.makeDirectory(tmp);
    File.makeDirectory(tmp + "in");
    File.makeDirectory(tmp + "out");
    if (!File.isDirectory(tmp + "in") || !File.isDirectory(tmp + "out"))
        exit("Cannot create a temporary folder in " + getDirectory("temp"));
    return tmp;
}

function emptyFolder(dir) {
    list = getFileList(dir);
    for (k = 0; k < list.length; k++)
        ok = File.delete(dir + list[k]);
}

function removeTempFolder(tmp) {
    emptyFolder(tmp + "in" + File.separator);
    emptyFolder(tmp + "out" + File.separator);
    ok = File.delete(tmp + "in");
    ok = File.delete(tmp + "out");
    emptyFolder(tmp);
    ok = File.delete(tmp);
}

// The file DeepImageJ wrote for the plane file "<prefix>.tif": "<prefix>_<output name>.tif"
// ("" when there is none). The w2sr bundle's output is named "output".
function deepImageJOutput(produced, prefix) {
    result = "";
    for (k = 0; k < produced.length; k++)
        if (startsWith(produced[k], prefix + "_") && endsWith(produced[k], ".tif"))
            if (result == "" || produced[k] == prefix + "_output.tif")
                result = produced[k];
    return result;
}

// Predicts every plane of one file into outPath; returns "" or the reason it failed.
function processFile(path, outPath, model, tmp) {
    problem = headerProblem(path);
    if (problem != "")
        return "cannot read " + path + ": " + problem;
    mine = imageIds(); // images open before (the user's, in the GUI): left alone
    IJ.redirectErrorMessages();
    open(path);
    if (nImages == mine.length)
        return "ImageJ cannot open " + path + " (unreadable or unsupported image)";
    src = getImageID();
    err = predictImage(src, outPath, model, tmp);
    closeImagesExcept(mine);
    emptyFolder(tmp + "in" + File.separator);
    emptyFolder(tmp + "out" + File.separator);
    return err;
}

function imageIds() {
    ids = newArray(nImages);
    for (k = 1; k <= nImages; k++) {
        selectImage(k);
        ids[k - 1] = getImageID();
    }
    return ids;
}

// Closes every open image whose ID is not in keep.
function closeImagesExcept(keep) {
    ids = imageIds();
    for (k = 0; k < ids.length; k++) {
        found = false;
        for (j = 0; j < keep.length; j++)
            if (keep[j] == ids[k]) found = true;
        if (!found) {
            selectImage(ids[k]);
            close();
        }
    }
}

// getVoxelSize reports "microns"/"pixels"; the calibration stores "micron"/"pixel".
function singularUnit(unit) {
    if (unit == "microns") return "micron";
    if (unit == "pixels") return "pixel";
    if (unit == "inches") return "inch";
    return unit;
}

// Super-resolves image src plane by plane and saves the assembled result to outPath.
// All planes go to DeepImageJ in one call (input_path = a folder of 32-bit plane files), so the
// model is loaded once per image; the results are read back in plane order and stacked.
function predictImage(src, outPath, model, tmp) {
    selectImage(src);
    if (bitDepth() == 24)
        return "RGB colour image: the model takes one channel (convert to 8/16/32-bit grayscale first)";
    getDimensions(width, height, channels, slices, frames);
    shapeProblem = flattenedShape();
    if (shapeProblem != "")
        return shapeProblem;
    tooLarge = deepImageJLimit(model, width, height);
    if (tooLarge != "")
        return SKIP + tooLarge;
    tile = rdfNumber(model, "deepimagej_tile");
    halo = rdfNumber(model, "deepimagej_halo");
    canvasW = paddedSide(width, tile, halo);
    canvasH = paddedSide(height, tile, halo);
    getVoxelSize(pw, ph, pd, unit);
    unit = singularUnit(unit);
    frameInterval = Stack.getFrameInterval();
    n = nSlices;
    inDir = tmp + "in" + File.separator;
    outDir = tmp + "out" + File.separator;
    emptyFolder(inDir);
    emptyFolder(outDir);
    for (plane = 1; plane <= n; plane++) {
        selectImage(src);
        setSlice(plane);
        run("Select None");
        run("Duplicate...", "title=w2sr_in");
        if (nSlices != 1)
            return "could not take plane " + plane + " out of the stack";
        run("32-bit"); // before DeepImageJ: its pre-processing would run on 8/16-bit integers
        getRawStatistics(nFinite);
        if (nFinite < getWidth() * getHeight()) { // ImageJ leaves NaN and +-Inf out of the count
            where = "";
            if (n > 1) where = " in plane " + plane + " of " + n;
            return "holds NaN or Inf values" + where + " (" + (getWidth() * getHeight() - nFinite) + " pixels); the model needs finite numbers";
        }
        mirrorPadTo(canvasW, canvasH);
        saveAs("Tiff", inDir + TMP_PLANE + IJ.pad(plane, 6) + ".tif");
        close();
    }
    run("DeepImageJ Run", "model_path=[" + model + "] input_path=[" + inDir + "] output_folder=[" + outDir + "] display_output=null");
    produced = getFileList(outDir);
    for (plane = 1; plane <= n; plane++) {
        result = deepImageJOutput(produced, TMP_PLANE + IJ.pad(plane, 6));
        if (result == "") {
            where = "";
            if (n > 1) where = " for plane " + plane + " of " + n;
            return "DeepImageJ Run wrote no output" + where + "; its error is in the Log / Console (DeepImageJ 3.1 or newer? does the model run on this image?)";
        }
        open(outDir + result);
        if (getWidth() != 2 * canvasW || getHeight() != 2 * canvasH || bitDepth() != 32) {
            got = "" + getWidth() + "x" + getHeight() + ", " + bitDepth() + "-bit";
            return "unexpected model output " + got + " (expected " + (2 * canvasW) + "x" + (2 * canvasH) + ", 32-bit): is this the w2sr 2x model?";
        }
        if (canvasW != width || canvasH != height) {
            makeRectangle(0, 0, 2 * width, 2 * height); // drop what the mirror padding added
            run("Crop");
            run("Select None");
        }
        rename(OUT_PLANE + IJ.pad(plane, 6));
        out = getImageID();
    }
    if (n == 1) {
        dst = out;
    } else {
        // the result planes, in the order they were opened, become one stack
        run("Images to Stack", "name=w2sr_result title=" + OUT_PLANE + " use");
        dst = getImageID();
        if (nSlices != n)
            return "could not assemble the " + n + " result planes into a stack";
    }
    selectImage(dst);
    if (n > 1) {
        Stack.setDimensions(channels, slices, frames);
        if (frames > 1 && frameInterval > 0)
            Stack.setFrameInterval(frameInterval);
        setSlice(1);
    }
    setVoxelSize(pw / 2, ph / 2, pd, unit);
    resetMinAndMax();
    // write beside the target under a temporary name, then rename: no half-written _sr.tif
    partial = File.getDirectory(outPath) + "." + File.getNameWithoutExtension(outPath) + ".partial.tif";
    saveAs("Tiff", partial);
    if (File.exists(outPath))
        ok = File.delete(outPath);
    if (!File.rename(partial, outPath)) {
        ok = File.delete(partial);
        return "cannot write " + outPath;
    }
    return "";
}

// A number written as "key: N" on a line of the model's rdf.yaml (-1 when absent). The w2sr
// exporter writes config.w2sr.network.deepimagej_tile / deepimagej_halo that way.
function rdfNumber(model, key) {
    lines = split(File.openAsString(model + File.separator + "rdf.yaml"), "\n");
    for (k = 0; k < lines.length; k++) {
        t = replace(lines[k], " ", "");
        if (startsWith(t, key + ":"))
            return parseInt(substring(t, lengthOf(key) + 1));
    }
    return -1;
}

// "" when DeepImageJ 3.1 (JDLL 0.6.1) can run a width x height plane with this bundle, else why not.
// JDLL holds the whole 2x output in one array (at most 2^31 - 1 pixels); and when the rdf lets the
// tile grow with the image (no deepimagej_tile: older bundles), a tile above 4096*4096*3 pixels
// sends JDLL's TileCalculator.checkOutputSize into a loop that never returns.
function deepImageJLimit(model, width, height) {
    use = " - use 'w2sr predict' (Python, tiled, any size) for this image";
    if (4.0 * width * height > 2147483647)
        return "" + width + "x" + height + " is too large for DeepImageJ 3.1: its 2x output would exceed 2^31-1 pixels, the largest image JDLL and ImageJ hold" + use;
    if (rdfNumber(model, "deepimagej_tile") <= 0) {
        h = maxOf(0, rdfNumber(model, "deepimagej_halo"));
        if (h == 0) h = 32; // unknown halo: a generous guess
        if ((width + 2.0 * h) * (height + 2.0 * h) > 4096.0 * 4096 * 3)
            return "" + width + "x" + height + " is above DeepImageJ 3.1's limit for this model: JDLL 0.6.1 takes the whole image as one tile and never returns above 4096*4096*3 pixels" + use;
    }
    return "";
}

// The side a plane is mirror-padded to before DeepImageJ: a side shorter than tile - 2*halo becomes
// the smallest whole number of mirrored copies of itself that reaches tile - 2*halo. JDLL 0.6.1
// refuses a tile more than 3x the image side and, when tile - side is odd, shifts such an output by
// one pixel; this avoids both, and whole copies keep the image's percentiles (a percentile-normalised
// model sees the same input; export.jdll.macro_canvas, fiji_macros/README.md).
function paddedSide(side, tile, halo) {
    need = tile - 2 * maxOf(halo, 0);
    if (tile > 0 && side < need)
        return side * Math.ceil(need / side);
    return side;
}

// Mirror index (numpy "symmetric": the edge pixel repeated) of i in 0..n-1.
function fold(i, n) {
    i = i % (2 * n);
    if (i >= n)
        i = 2 * n - 1 - i;
    return i;
}

// Replaces the active single-plane 32-bit image by itself mirror-padded at the bottom and right
// to w x h (same title), as export.jdll.predict_like_macro does.
function mirrorPadTo(w, h) {
    sw = getWidth();
    sh = getHeight();
    if (w == sw && h == sh)
        return;
    title = getTitle();
    pix = newArray(sw * sh);
    for (y = 0; y < sh; y++)
        for (x = 0; x < sw; x++)
            pix[y * sw + x] = getPixel(x, y);
    close();
    newImage(title, "32-bit black", w, h, 1);
    for (y = 0; y < h; y++) {
        row = fold(y, sh) * sw;
        for (x = 0; x < w; x++)
            setPixel(x, y, pix[row + fold(x, sw)]);
    }
}

// Little/big-endian unsigned integers in a raw string of bytes.
function u16(b, p, le) {
    if (le) return charCodeAt(b, p) + 256 * charCodeAt(b, p + 1);
    return 256 * charCodeAt(b, p) + charCodeAt(b, p + 1);
}
function u32(b, p, le) {
    if (le) return u16(b, p, le) + 65536 * u16(b, p + 2, le);
    return 65536 * u16(b, p, le) + u16(b, p + 2, le);
}

// "" unless the first image of a TIFF points past the end of the file (a truncated copy, which
// ImageJ would open silently with zeros). Reads the first IFD's StripOffsets/StripByteCounts.
function tiffTruncation(path, le) {
    size = File.length(path);
    b = File.openAsRawString(path, 1048576);
    ifd = u32(b, 4, le);
    if (ifd + 2 > lengthOf(b))
        return "";  // the directory lies beyond what is read here: not checked
    n = u16(b, ifd, le);
    offsets = -1; counts = -1; nStrips = 0; wide = 4; offWide = 4; cntWide = 4;
    for (k = 0; k < n && ifd + 14 + 12 * k <= lengthOf(b); k++) {
        e = ifd + 2 + 12 * k;
        tag = u16(b, e, le);
        type = u16(b, e + 2, le);
        count = u32(b, e + 4, le);
        if (tag == 273 || tag == 279) {
            wide = 4;
            if (type == 3) wide = 2;
            if (count * wide <= 4) where = e + 8; else where = u32(b, e + 8, le);
            if (tag == 273) { offsets = where; nStrips = count; offWide = wide; }
            else { counts = where; cntWide = wide; }
        }
    }
    if (offsets < 0 || counts < 0 || offsets + nStrips * offWide > lengthOf(b) || counts + nStrips * cntWide > lengthOf(b))
        return "";
    for (k = 0; k < nStrips; k++) {
        if (offWide == 2) o = u16(b, offsets + 2 * k, le); else o = u32(b, offsets + 4 * k, le);
        if (cntWide == 2) c = u16(b, counts + 2 * k, le); else c = u32(b, counts + 4 * k, le);
        if (o + c > size)
            return "truncated TIFF: its image data runs to byte " + (o + c) + " but the file has " + size + " bytes";
    }
    return "";
}

// "" when the open image is 2D or a stack ImageJ understands; else why not. A TIFF written with more
// than 3 dimensions by another program (tifffile: ImageDescription {"shape": [...]}) is read by
// ImageJ 1 as one flat stack: its planes would be mixed up, so it is refused, as w2sr predict does.
function flattenedShape() {
    info = getMetadata("Info");
    k = indexOf(info, "{\"shape\": [");
    if (k < 0 || nSlices == 1)
        return "";
    dims = split(substring(info, k + 11, indexOf(info, "]", k)), ", ");
    if (dims.length > 3)
        return "a " + dims.length + "-D array (shape [" + String.join(dims, ", ") + "]) that ImageJ reads as one flat stack of " + nSlices + " planes; save it as an ImageJ hyperstack or 2D/3D TIFF";
    return "";
}

// Whether an existing result file is one to keep: opens, 32-bit, finite in every plane.
function outputIsGood(path) {
    mine = nImages;
    IJ.redirectErrorMessages();
    open(path);
    if (nImages == mine)
        return false;
    good = bitDepth() == 32;
    for (k = 1; k <= nSlices && good; k++) {
        setSlice(k);
        getRawStatistics(nFinite);
        good = nFinite == getWidth() * getHeight();
    }
    close();
    return good;
}
