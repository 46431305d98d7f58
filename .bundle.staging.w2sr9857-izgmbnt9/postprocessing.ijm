// Postprocessing of the w2sr model for DeepImageJ 2.1 (DeepImageJ 3 uses the rdf's own ops).
// none: outputs stay in normalised units (about 0 = background, 1 = bright)
