"""IRIS Studio: a local Gradio app for generation, inpainting, editing, upscaling and control (IRIS engine).

Launch with `iris-studio` (or `python app.py`); `iris_studio.app.build_app` builds the UI for embedding/tests.
Importing this package is cheap: gradio, torch and the engine load only when the app is built.
"""

__version__ = "0.1.0"
