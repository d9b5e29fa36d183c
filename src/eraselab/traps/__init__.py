"""Copyright traps for language models (Meeus et al., ICML 2024), with a calibrated membership test.

``generate`` samples trap sequences and their secret siblings from a reference causal LM, ``inject`` publishes the
traps inside documents and writes the private key, ``detect`` scores a suspect model (``scores/``, one forward
pass) and turns the scores into evidence (``evidence``: AUC, TPR at low FPR, exact rank p-values combined by
Fisher's method), ``power`` says how many traps a publisher needs, and ``demo`` runs it all on the trap world
(``world`` and ``lm``: a code-generated corpus and small GPT-2 models trained here).
"""
