"""The run itself: its parameters (`config`), its folder and atomic writes (`runfolder`), the step
manifests (`record`), provenance, errors, progress lines and the notebook kernel. The lowest layer:
it imports no other icdlib folder."""
