package nexuskv

import (
	"context"

	"google.golang.org/grpc/codes"

	pb "github.com/nexuskv/nexuskv/clients/go/nexuskvpb"
)

// GetSession is a session's metadata with per-turn info (Turns). NotFound when the session does
// not exist (for this caller's tenant).
func (c *Client) GetSession(ctx context.Context, sessionID string) (*pb.SessionInfo, error) {
	const rpc = "GetSession"
	ctx, cancel, err := c.begin(ctx, rpc, sessionID)
	if err != nil {
		return nil, err
	}
	defer cancel()
	info, err := c.stub.GetSession(ctx, &pb.GetSessionRequest{SessionId: sessionID})
	return info, wrapError(rpc, sessionID, err)
}

// ListSessions is one page of sessions, in session id order (SessionInfo.Turns left empty by the
// server). req.PageSize 0 is the server's default (100), at most 1000; pass the previous page's
// NextPageToken as req.PageToken for the next page, until it is empty. No session header is sent:
// behind a gateway that routes on it, this lists one shard.
func (c *Client) ListSessions(ctx context.Context, req *pb.ListSessionsRequest) (*pb.ListSessionsResponse, error) {
	const rpc = "ListSessions"
	ctx, cancel, err := c.begin(ctx, rpc, "")
	if err != nil {
		return nil, err
	}
	defer cancel()
	page, err := c.stub.ListSessions(ctx, req)
	return page, wrapError(rpc, "", err)
}

// ListAllSessions is every session whose id starts with prefix, following page tokens; each page
// is its own call, with its own default deadline when ctx has none. pageSize 0: the server's
// default. Internal when the server repeats a page token.
func (c *Client) ListAllSessions(ctx context.Context, prefix string, pageSize uint32) ([]*pb.SessionInfo, error) {
	var all []*pb.SessionInfo
	token := ""
	for {
		page, err := c.ListSessions(ctx, &pb.ListSessionsRequest{PageSize: pageSize, PageToken: token, Prefix: prefix})
		if err != nil {
			return nil, err
		}
		all = append(all, page.Sessions...)
		if page.NextPageToken == "" {
			return all, nil
		}
		if page.NextPageToken == token {
			return nil, newError("ListSessions", "", codes.Internal,
				"the server repeated page token %q", token)
		}
		token = page.NextPageToken
	}
}

// DeleteSession deletes every turn and fit of a session. NotFound when it does not exist.
func (c *Client) DeleteSession(ctx context.Context, sessionID string) (*pb.DeleteSessionResponse, error) {
	const rpc = "DeleteSession"
	ctx, cancel, err := c.begin(ctx, rpc, sessionID)
	if err != nil {
		return nil, err
	}
	defer cancel()
	r, err := c.stub.DeleteSession(ctx, &pb.DeleteSessionRequest{SessionId: sessionID})
	return r, wrapError(rpc, sessionID, err)
}
