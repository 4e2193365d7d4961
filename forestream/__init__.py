"""forestream application shell: the command tree, the local broker, the demo.

This is the one package allowed to import training, worker and producer (to register their
commands); they never import each other or this package.
"""
