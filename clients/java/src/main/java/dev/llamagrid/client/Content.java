package dev.llamagrid.client;

import com.google.protobuf.ByteString;
import dev.llamagrid.v1.ChatMessage;
import dev.llamagrid.v1.ContentPart;
import dev.llamagrid.v1.Image;
import java.util.Arrays;

/**
 * Builders for chat turns made of parts, text and images in order ({@code ChatMessage.parts}),
 * for a model that reads images ({@code ModelInfo.getVision()}). A model without a projector
 * refuses images with {@code INVALID_ARGUMENT}.
 *
 * <pre>{@code
 * ChatMessage turn =
 *     Content.message(
 *         "user", Content.text("What is in this picture?"), Content.image(png, "image/png"));
 * }</pre>
 */
public final class Content {
  private Content() {}

  /**
   * An encoded image (PNG, JPEG, GIF, BMP, TGA or PNM), for {@link #image(Image)} or for {@code
   * GenerateRequest.addImages} with a raw prompt, where each takes the place of one {@code
   * ModelInfo.getMediaMarker()}. {@code mimeType} is its type, such as {@code "image/png"}; ""
   * lets the worker detect it from the bytes.
   */
  public static Image imageData(byte[] data, String mimeType) {
    return Image.newBuilder().setData(ByteString.copyFrom(data)).setMimeType(mimeType).build();
  }

  /** An image part of a chat turn; see {@link #imageData}. */
  public static ContentPart image(byte[] data, String mimeType) {
    return image(imageData(data, mimeType));
  }

  /** An image part of a chat turn. */
  public static ContentPart image(Image image) {
    return ContentPart.newBuilder().setImage(image).build();
  }

  /** A text part of a chat turn. */
  public static ContentPart text(String text) {
    return ContentPart.newBuilder().setText(text).build();
  }

  /** A chat turn with this role made of these parts, in order. */
  public static ChatMessage message(String role, Iterable<ContentPart> parts) {
    return ChatMessage.newBuilder().setRole(role).addAllParts(parts).build();
  }

  /** Like {@link #message(String, Iterable)}. */
  public static ChatMessage message(String role, ContentPart... parts) {
    return message(role, Arrays.asList(parts));
  }
}
