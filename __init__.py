"""ComfyUI node pack "IP-Adapter Train": train, save, load, apply and score IP-Adapters in a graph.

ComfyUI imports this folder as a package and calls `comfy_entrypoint`. The nodes live in `nodes/`,
the training core (which never imports ComfyUI) in `ipadapter_train/`. The nodes are imported inside
the entry point so that importing this file outside ComfyUI (pytest collects the repository root as a
package) needs no ComfyUI.
"""
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: the extension that lists the pack's nodes."""
    from .nodes.extension import IPAdapterTrainExtension

    return IPAdapterTrainExtension()
