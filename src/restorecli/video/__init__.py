"""Videos: frames read with their timestamps (``read``), restored frames encoded and the other streams remuxed
(``write``), and ``restore_video``, which runs a video's frames through a ``Restorer`` (``restore``). The
containers and codecs by name (``formats``) import no codec, so planning can tell a video by its name; the rest
needs PyAV (``restorecli[video]``), imported when a video is opened."""
