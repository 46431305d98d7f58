package ij.macro;

import ij.IJ;
import ij.Macro;

import java.awt.Component;
import java.awt.Container;
import java.awt.Dialog;
import java.awt.Label;
import java.awt.TextComponent;
import java.awt.Window;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;

/**
 * Runs one ImageJ 1.x macro file without a person at the screen, and says through its exit code
 * whether the macro succeeded.
 *
 * <pre>
 *   java -cp ij.jar:build/classes ij.macro.HeadlessMacroRunner MACRO.ijm ["ARGUMENT"]
 * </pre>
 *
 * ImageJ 1.x was written for a desktop: a macro error opens a modal "Macro Error" dialog, and
 * {@code exit("message")} a message box, so an unattended run either hangs or exits 0 whatever
 * happened. This runner changes that:
 * <ul>
 *   <li>No ImageJ main window is created: IJ.log(), print() and IJ.showMessage() then write to
 *       standard output.</li>
 *   <li>The macro runs in an Interpreter subclass (hence the package {@code ij.macro}: the method
 *       that shows the error dialog is package-private) that writes the error, with its line, to
 *       standard error instead.</li>
 *   <li>{@code exit("message")} and IJ.error() messages go to standard error (recognised by the
 *       caller on the stack), and so do the stack traces ImageJ prints when a command throws.</li>
 *   <li>A watchdog closes the run if a modal dialog stays open for 2 s (a macro asking for input,
 *       a plugin dialog without options): its title, text, class and the macro's stack go to
 *       standard error.</li>
 * </ul>
 *
 * Exit codes: 0 success (also a plain {@code exit} without message); 1 macro error or uncaught
 * exception; 2 ended by {@code exit("message")} or by an IJ.error() that aborted the macro;
 * 3 bad usage (macro file missing); 4 a dialog opened.
 *
 * The argument is what the macro's {@code getArgument()} returns, as with
 * {@code ImageJ-linux64 --headless -macro file.ijm "argument"} in Fiji.
 */
public class HeadlessMacroRunner {

    public static final int OK = 0, MACRO_ERROR = 1, MACRO_EXIT = 2, USAGE = 3, DIALOG = 4;

    private static final PrintStream ERR = System.err;

    /** exit("...") message, if the macro called exit with a message. */
    static volatile String exitMessage;
    /** The thread running the macro (its stack is printed when a dialog stops the run). */
    static volatile Thread macroThread;
    /** Last IJ.error() message. */
    static volatile String ijErrorMessage;

    /** Interpreter whose error dialog is replaced by a line on standard error. */
    static final class ReportingInterpreter extends Interpreter {
        volatile String reported;

        @Override
        void showError(String title, String msg, String[] variables) {
            reported = msg;
            ERR.println(title + ": " + msg.replace("\n \n", "\n").trim());
            ERR.flush();
        }
    }

    /**
     * Standard output that recognises who is printing: the message of exit("...") and IJ.error(),
     * and stack traces of commands that threw, are sent to standard error.
     */
    static final class RoutingStream extends PrintStream {
        private final PrintStream out;

        RoutingStream(PrintStream out) {
            super(out, true);
            this.out = out;
        }

        @Override
        public void println(String s) {
            StackTraceElement[] frames = new Throwable().getStackTrace();
            String route = null;
            for (int i = 0; i < Math.min(frames.length, 12); i++) {
                String cls = frames[i].getClassName(), m = frames[i].getMethodName();
                if (cls.equals("ij.macro.Functions") && m.equals("exit")) {
                    exitMessage = s;
                    route = "Macro exit: ";
                    break;
                }
                if (cls.equals("ij.IJ") && m.equals("error")) {
                    ijErrorMessage = s;
                    route = "ImageJ error: ";
                    break;
                }
                if (cls.equals("ij.IJ") && m.equals("log") && i + 1 < frames.length
                        && frames[i + 1].getClassName().equals("ij.Executer")) {
                    route = "Exception in command: ";
                    break;
                }
            }
            if (route == null) {
                out.println(s);
            } else {
                ERR.println(route + s);
                ERR.flush();
            }
        }
    }

    private static String dialogText(Component c) {
        StringBuilder sb = new StringBuilder();
        if (c instanceof Label)
            sb.append(((Label) c).getText()).append(' ');
        else if (c instanceof TextComponent)
            sb.append(((TextComponent) c).getText()).append(' ');
        else if (c instanceof java.awt.Button)
            sb.append('[').append(((java.awt.Button) c).getLabel()).append("] ");
        else if (c instanceof javax.swing.JLabel)
            sb.append(((javax.swing.JLabel) c).getText()).append(' ');
        if (c instanceof Container)
            for (Component child : ((Container) c).getComponents())
                sb.append(dialogText(child));
        return sb.toString();
    }

    /** How long a modal dialog must stay open before the run is ended: one that waits for a
     *  person stays open forever, while ImageJ may show and close one by itself within a moment
     *  (CI once stopped a run on a modal dialog titled null with no text, seen for under 200 ms). */
    static final long DIALOG_GRACE_MS = 2000;

    /** Ends the process when a modal dialog has been showing for DIALOG_GRACE_MS: nobody is there
     *  to answer it. Its title, text, class and where the macro was go to standard error. */
    private static void startDialogWatchdog() {
        Thread t = new Thread(() -> {
            java.util.Map<Window, Long> firstSeen = new java.util.IdentityHashMap<>();
            while (true) {
                try {
                    Thread.sleep(200);
                } catch (InterruptedException e) {
                    return;
                }
                long now = System.currentTimeMillis();
                java.util.Set<Window> showing = java.util.Collections.newSetFromMap(new java.util.IdentityHashMap<>());
                for (Window w : Window.getWindows())
                    if (w instanceof Dialog && w.isShowing() && ((Dialog) w).isModal())
                        showing.add(w);
                firstSeen.keySet().retainAll(showing);
                for (Window w : showing) {
                    long since = firstSeen.computeIfAbsent(w, k -> now);
                    if (now - since < DIALOG_GRACE_MS)
                        continue;
                    ERR.println("HeadlessMacroRunner: a dialog opened during an unattended run: '"
                            + ((Dialog) w).getTitle() + "': " + dialogText(w).trim().replaceAll("\\s+", " "));
                    ERR.println("HeadlessMacroRunner: pass the macro its arguments instead of answering dialogs.");
                    ERR.println("HeadlessMacroRunner: the dialog is a " + w.getClass().getName()
                            + "; the macro was at:");
                    Thread m = macroThread;
                    if (m != null)
                        for (StackTraceElement e : m.getStackTrace())
                            ERR.println("    at " + e);
                    ERR.flush();
                    System.out.flush();
                    Runtime.getRuntime().halt(DIALOG);
                }
            }
        }, "HeadlessMacroRunner-dialog-watchdog");
        t.setDaemon(true);
        t.start();
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1 || args.length > 2) {
            ERR.println("usage: HeadlessMacroRunner MACRO.ijm [ARGUMENT]");
            System.exit(USAGE);
        }
        Path macroFile = Paths.get(args[0]);
        if (!Files.isRegularFile(macroFile)) {
            ERR.println("HeadlessMacroRunner: macro file not found: " + macroFile);
            System.exit(USAGE);
        }
        final String code = new String(Files.readAllBytes(macroFile), StandardCharsets.UTF_8);
        final String argument = args.length > 1 ? args[1] : "";

        System.setOut(new RoutingStream(System.out));
        IJ.setExceptionHandler(e -> {
            ERR.print("Exception: ");
            e.printStackTrace(ERR);
            ERR.flush();
        });
        startDialogWatchdog();

        final ReportingInterpreter interp = new ReportingInterpreter();
        final int[] code_ = {OK};
        final Throwable[] failure = {null};
        final boolean[] cancelled = {false};
        // Same thread naming as ImageJ's own macro threads, so Macro.abort() stops this macro.
        macroThread = new Thread(() -> {
            try {
                interp.run(code, argument);
            } catch (RuntimeException e) {
                if (Macro.MACRO_CANCELED.equals(e.getMessage()))
                    cancelled[0] = true;
                else
                    failure[0] = e;
            } catch (Throwable e) {
                failure[0] = e;
            }
        }, "HeadlessMacroRunner_Macro$");
        macroThread.start();
        macroThread.join();

        if (failure[0] != null) {
            ERR.print("HeadlessMacroRunner: the macro failed with an exception: ");
            failure[0].printStackTrace(ERR);
            code_[0] = MACRO_ERROR;
        } else if (interp.wasError() || interp.reported != null) {
            code_[0] = MACRO_ERROR;
        } else if (exitMessage != null || (cancelled[0] && ijErrorMessage != null)) {
            code_[0] = MACRO_EXIT;
        }
        System.out.flush();
        ERR.flush();
        System.exit(code_[0]);
    }
}
