"""One step per manual step of the procedure; see :mod:`roboshop_dispatch.steps.base`."""
