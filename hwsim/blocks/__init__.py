"""Hardware blocks of the accelerator, one module each; each block is a class whose behaviour is
one simpy process (``run``) or a generator its users delegate to (``transfer``), wired by simpy
Stores and Containers (style.md rule 1)."""
