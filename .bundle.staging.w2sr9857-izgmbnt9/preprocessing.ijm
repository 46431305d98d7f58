// Preprocessing of the w2sr model for DeepImageJ 2.1 (DeepImageJ 3 uses the rdf's own ops).
// scale_range, per image: x -> (x - p1.0) / (p99.8 - p1.0 + 1e-6), where pP is the sorted
// pixel values' element int(N * P / 100) (JDLL's percentile, w2sr/core/normalization.py).
// Converted to 32-bit first: on 8/16-bit images ImageJ would round every step to integers.
if (bitDepth() != 32) run("32-bit");
w = getWidth(); h = getHeight(); n = w * h;
v = newArray(n);
for (y = 0; y < h; y++) for (x = 0; x < w; x++) v[y * w + x] = getPixel(x, y);
Array.sort(v);
lo = v[minOf(floor(n * (1.0 / 100)), n - 1)];
hi = v[minOf(floor(n * (99.8 / 100)), n - 1)];
run("Subtract...", "value=" + d2s(lo, 9) + " slice");
run("Divide...", "value=" + d2s(hi - lo + 1e-6, 9) + " slice");
