import ij.IJ;
import ij.ImagePlus;
import ij.Macro;
import ij.WindowManager;
import ij.io.FileSaver;
import ij.plugin.PlugIn;

import java.io.BufferedReader;
import java.io.File;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;

import javax.swing.SwingUtilities;

/**
 * STAND-IN for DeepImageJ 3.1's "DeepImageJ Run" command, for tests on a machine where Fiji,
 * DeepImageJ and its Java deep-learning engines cannot be installed. It is NOT DeepImageJ.
 *
 * <p>What it reproduces (read in deepimagej-plugin's DeepImageJ_Run.java, release of July 2025):
 * <ul>
 *   <li>the macro form {@code run("DeepImageJ Run", "model_path=[...] input_path=[...]
 *       output_folder=[...] display_output=[all|null]")}: keys read with ij.Macro.getValue,
 *       an empty value or "null" means absent, model_path is required;</li>
 *   <li>model_path: an absolute folder is used as given (even if it does not exist), else a folder
 *       of that name under ImageJ's "models" folder, else a local model nickname; otherwise
 *       "Model '...' not found either locally or on the Bioimage.io repo." (the real plugin would
 *       then search the online zoo; the stand-in has no network);</li>
 *   <li>a missing input_path is an IllegalArgumentException; output_folder is created;</li>
 *   <li>a model folder without a readable rdf.yaml: DeepImageJ 3.1 prints the exception to
 *       standard error and returns WITHOUT failing the macro and without output. The stand-in
 *       does the same, so macros must check for the output themselves;</li>
 *   <li>input_path = a file: the file is opened with IJ.openImage (a file ImageJ cannot open gives
 *       a failure, a NullPointerException in DeepImageJ); input_path = a folder: every file in it;
 *       input_path absent: the active image;</li>
 *   <li>the output is a new 32-bit, uncalibrated image titled {@code <short title>_<output name>}
 *       (short title = ImagePlus.getShortTitle(): the title without extension, and in ImageJ
 *       1.53t without spaces; output name = the rdf's output tensor name), saved with IJ.saveAsTiff as {@code output_folder/<title>.tif} when
 *       output_folder is given, shown (SwingUtilities.invokeLater, i.e. not yet visible when the
 *       command returns) when display_output=all, or, for the active image, also when
 *       display_output is absent;</li>
 *   <li>failures while running the model are RuntimeExceptions (ImageJ reports them; a macro
 *       goes on with its next line);</li>
 *   <li>what JDLL 0.6.1 throws while processing or tiling an image (for example the
 *       IllegalArgumentException on scalar {@code mean}/{@code std} with {@code axes}) is printed
 *       and that image gets no output; the macro goes on (measured with deepimagej-plugin c84362b and
 *       JDLL 0.6.1 for the processing exception; assumed the same for the tiling ones);</li>
 *   <li>8/16-bit images are copied to float before the pre-processing (JDLL 0.6.1's run path,
 *       measured: a raw uint16 file gives the same result as its 32-bit conversion).</li>
 * </ul>
 *
 * <p>What it does instead of DeepImageJ: the model runs through
 * {@code fiji_macros/runner/deepimagej_standin.py}, which follows JDLL 0.6.1 ({@code export.jdll}:
 * its kwargs checks and processing, its tile formula, every tile mirror-padded by the halo, its
 * stitching) with the bundle's ONNX weights in Python's ONNX Runtime instead of JDLL's Java engines.
 * Stacks, RGB images and models with several inputs are refused; there is no GUI.
 *
 * <p>Configuration: system property {@code w2sr.python} (or env {@code W2SR_PYTHON}) = the Python
 * interpreter with the project installed; {@code w2sr.standin.script} (or env
 * {@code W2SR_STANDIN_SCRIPT}) = the script, default {@code <plugins folder>/deepimagej_standin.py};
 * {@code w2sr.standin.timeout} = seconds per model run (default 600).
 */
public class DeepImageJ_Run implements PlugIn {

    static final String MACRO_INFO = "https://github.com/deepimagej/deepimagej-plugin/blob/main/README.md#macros";
    /** Exit code of the Python side when the model folder holds no usable rdf.yaml. */
    static final int RDF_PROBLEM = 3;
    /** Exit code of the Python side when JDLL would throw while processing or tiling this image. */
    static final int JDLL_THROWS = 4;

    private String modelArg, modelFolder, inputPath, outputFolder, display;

    @Override
    public void run(String arg) {
        if (!IJ.isMacro()) {
            IJ.log("DeepImageJ Run (w2sr stand-in): no GUI; call it from a macro with model_path=[...]");
            return;
        }
        if (Macro.getOptions() == null)
            return; // as DeepImageJ 3.1: a macro call without options does nothing
        runMacro();
    }

    private void runMacro() {
        String options = Macro.getOptions();
        modelArg = parseArg(options, "model_path", true);
        inputPath = parseArg(options, "input_path", false);
        outputFolder = parseArg(options, "output_folder", false);
        display = parseArg(options, "display_output", false);
        modelFolder = identifyModel(modelArg);

        if (inputPath != null && !new File(inputPath).exists())
            throw new IllegalArgumentException("The provided input folder does not exist: " + inputPath);
        if (outputFolder != null && !new File(outputFolder).isDirectory() && !new File(outputFolder).mkdirs())
            throw new IllegalArgumentException("The provided output folder does not exist and cannot be created: " + outputFolder);

        File rdf = new File(modelFolder, "rdf.yaml");
        if (!rdf.isFile()) {
            // DeepImageJ 3.1 catches this in runMacro(), prints it and returns: no error for the macro.
            new FileNotFoundException(rdf.getPath() + " (No such file or directory)").printStackTrace();
            return;
        }
        try {
            checkModel(); // reading the rdf and loading the weights happen before any image is touched
        } catch (QuietStop stop) {
            return;
        }
        if (inputPath != null) {
            File f = new File(inputPath);
            if (f.isDirectory()) {
                File[] files = f.listFiles();
                Arrays.sort(files);
                for (File ff : files)
                    saveOrShow(runOnImage(openImage(ff)), false);
            } else {
                saveOrShow(runOnImage(openImage(f)), false);
            }
        } else {
            ImagePlus imp = WindowManager.getCurrentImage();
            if (imp == null)
                throw new NullPointerException("no active image (DeepImageJ 3.1 needs an open image when input_path is null)");
            saveOrShow(runOnImage(imp), true);
        }
    }

    private static String parseArg(String options, String key, boolean required) {
        String value = Macro.getValue(options, key, null);
        if (value != null && (value.equals("") || value.equals("null")))
            value = null;
        if (value == null && required)
            throw new IllegalArgumentException("DeepImageJ Run macro requires to the variable '" + key + "'. "
                    + "For more info, please visit: " + MACRO_INFO);
        return value;
    }

    private static String modelsDir() {
        String ij = IJ.getDirectory("imagej");
        return (ij == null ? "" : ij) + "models";
    }

    private static String identifyModel(String arg) {
        if (new File(arg).isAbsolute())
            return arg;
        File inModels = new File(modelsDir(), arg);
        if (inModels.isDirectory())
            return inModels.getAbsolutePath();
        File[] installed = new File(modelsDir()).listFiles(File::isDirectory);
        if (installed != null) {
            for (File dir : installed) {
                File rdf = new File(dir, "rdf.yaml");
                if (!rdf.isFile())
                    continue;
                try {
                    for (String line : Files.readAllLines(rdf.toPath(), StandardCharsets.UTF_8)) {
                        String t = line.trim();
                        if (t.startsWith("nickname:") && t.substring(9).trim().replace("'", "").replace("\"", "").equals(arg))
                            return dir.getAbsolutePath();
                    }
                } catch (IOException ignored) {
                    // an unreadable rdf is not this model
                }
            }
        }
        throw new IllegalArgumentException("Model '" + arg + "' not found either locally or on the Bioimage.io repo."
                + " (w2sr stand-in: the online zoo is not searched)");
    }

    private static ImagePlus openImage(File f) {
        ImagePlus imp = IJ.openImage(f.getAbsolutePath());
        if (imp == null)
            throw new NullPointerException("IJ.openImage could not open " + f.getAbsolutePath()
                    + " (DeepImageJ 3.1 fails here with a NullPointerException)");
        return imp;
    }

    private ImagePlus runOnImage(ImagePlus imp) {
        if (imp.getStackSize() != 1)
            throw new IllegalArgumentException("w2sr stand-in: only single-plane images are supported; "
                    + imp.getTitle() + " has " + imp.getStackSize() + " planes");
        if (imp.getType() == ImagePlus.COLOR_RGB || imp.getType() == ImagePlus.COLOR_256)
            throw new IllegalArgumentException("w2sr stand-in: " + imp.getTitle()
                    + " is a colour image; the model has one input channel");
        File tmp = null;
        try {
            tmp = Files.createTempDirectory("dij_standin_").toFile();
            File in = new File(tmp, "input.tif");
            File out = new File(tmp, "output.tif");
            ImagePlus asFloat = new ImagePlus("input", imp.getProcessor().convertToFloat());
            if (!new FileSaver(asFloat).saveAsTiff(in.getPath()))
                throw new RuntimeException("w2sr stand-in: cannot write " + in);
            String outputName = runPython(in, out);
            if (outputName == null)
                return null; // JDLL threw on this image: printed, no output
            ImagePlus result = IJ.openImage(out.getPath());
            if (result == null)
                throw new RuntimeException("w2sr stand-in: the predictor wrote no readable output");
            // a fresh image, as DeepImageJ builds one from the output tensor: no calibration, no info
            ImagePlus im = new ImagePlus(imp.getShortTitle() + "_" + outputName, result.getProcessor());
            return im;
        } catch (IOException e) {
            throw new RuntimeException("w2sr stand-in: " + e, e);
        } finally {
            if (tmp != null) {
                File[] files = tmp.listFiles();
                if (files != null)
                    for (File f : files)
                        f.delete();
                tmp.delete();
            }
        }
    }

    /** Reads the rdf and checks the weights (Python side, --check): a bad rdf ends the run quietly. */
    private void checkModel() {
        try {
            python(Arrays.asList("--model", modelFolder, "--check"));
        } catch (IOException e) {
            throw new RuntimeException("w2sr stand-in: " + e, e);
        }
    }

    private String runPython(File in, File out) throws IOException {
        String outputName = python(Arrays.asList("--model", modelFolder, "--input", in.getPath(),
                "--output", out.getPath()));
        if (outputName == null)
            return null;
        if (!out.isFile())
            throw new RuntimeException("w2sr stand-in: the predictor wrote no output");
        return outputName;
    }

    /** Runs the Python side with these arguments; returns the OUTPUT_NAME it reports. */
    private String python(List<String> args) throws IOException {
        String python = setting("w2sr.python", "W2SR_PYTHON", "python3");
        String script = setting("w2sr.standin.script", "W2SR_STANDIN_SCRIPT",
                IJ.getDirectory("plugins") + "deepimagej_standin.py");
        long timeout = Long.parseLong(setting("w2sr.standin.timeout", "W2SR_STANDIN_TIMEOUT", "600"));
        List<String> cmd = new ArrayList<>(Arrays.asList(python, script));
        cmd.addAll(args);
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        Process p;
        try {
            p = pb.start();
        } catch (IOException e) {
            throw new RuntimeException("w2sr stand-in: cannot start the Python predictor '" + python
                    + "' (set -Dw2sr.python or W2SR_PYTHON): " + e.getMessage(), e);
        }
        StringBuilder text = new StringBuilder();
        String outputName = null;
        try (BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
            String line;
            while ((line = r.readLine()) != null) {
                if (line.startsWith("OUTPUT_NAME="))
                    outputName = line.substring("OUTPUT_NAME=".length()).trim();
                else
                    text.append(line).append('\n');
            }
        }
        int rc;
        try {
            if (!p.waitFor(timeout, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                throw new RuntimeException("w2sr stand-in: the predictor took more than " + timeout + " s");
            }
            rc = p.exitValue();
        } catch (InterruptedException e) {
            p.destroyForcibly();
            Thread.currentThread().interrupt();
            throw new RuntimeException("w2sr stand-in: interrupted", e);
        }
        String msg = text.toString().trim();
        if (!msg.isEmpty())
            System.err.println(msg);
        if (rc == RDF_PROBLEM) {
            // DeepImageJ 3.1: a ModelSpecsException while reading the rdf is printed and the run ends quietly
            System.err.println("w2sr stand-in: model description rejected; DeepImageJ 3.1 would print this and return");
            throw new QuietStop();
        }
        if (rc == JDLL_THROWS) {
            System.err.println("w2sr stand-in: DeepImageJ 3.1 (JDLL 0.6.1) throws on this image; no output");
            return null;
        }
        if (rc != 0 || outputName == null)
            throw new RuntimeException("w2sr stand-in: running the model failed (exit " + rc + "): " + lastLines(msg, 6));
        return outputName;
    }

    /** Ends the command the way DeepImageJ 3.1 ends it for a bad rdf: without an error. */
    static final class QuietStop extends RuntimeException {
        private static final long serialVersionUID = 1L;

        QuietStop() {
            super("stop", null, false, false);
        }
    }

    private void saveOrShow(ImagePlus im, boolean activeImageMode) {
        if (im == null)
            return;
        im.getProcessor().resetMinAndMax();
        if (outputFolder != null)
            IJ.saveAsTiff(im, outputFolder + File.separator + im.getTitle());
        boolean show = display != null ? display.equals("all") : activeImageMode;
        if (show)
            SwingUtilities.invokeLater(im::show);
    }

    private static String setting(String property, String env, String fallback) {
        String v = System.getProperty(property);
        if (v == null || v.isEmpty())
            v = System.getenv(env);
        return v == null || v.isEmpty() ? fallback : v;
    }

    private static String lastLines(String s, int n) {
        String[] lines = s.split("\n");
        return String.join(" | ", Arrays.asList(lines).subList(Math.max(0, lines.length - n), lines.length));
    }
}
