-- An unknown user of a hosted domain is refused at RCPT (550 5.1.1).
dofile(common)
local conn = connect("127.0.0.1", "MTUNKNOWN")
mail_from(conn, SMFIR_CONTINUE, "<sender@x.test>")
rcpt_to(conn, "<nobody@abc.example>", SMFIR_REPLYCODE)
passed(conn)
