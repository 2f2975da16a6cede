"""Pure logic of the control plane: name rules, manifests, task services and the predict proxy."""
