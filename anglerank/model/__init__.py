"""Everything that touches the model: loading (:mod:`~anglerank.model.loading`: hub ids, folders,
the embedded GGUF), the machine (:mod:`~anglerank.model.device`: device, dtype, CPU features),
rendering (:mod:`~anglerank.model.render`: messages -> ids and spans), hook sites
(:mod:`~anglerank.model.hooks`) and generation (:mod:`~anglerank.model.generation`).

Importing the package loads none of them (no torch): import the module you need.
"""
