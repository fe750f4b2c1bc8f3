"""The face-gallery web demo (``python app/app.py``): Gradio UI over :mod:`h_model.faces`.

``uploads`` checks what people send, ``face_demo`` and ``fewshot_demo`` hold the logic (no UI),
``ui`` lays out the page and names the API endpoints, ``app`` is the command line.
"""
